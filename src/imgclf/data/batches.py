"""Mini-batches straight from an in-memory split, with batch-level augmentation."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from imgclf.data.augment import PRESETS
from imgclf.data.containers import ImageSplit


def num_batches(n: int, batch_size: int, *, drop_last: bool = False) -> int:
    """How many batches :func:`iterate_batches` yields for ``n`` examples."""
    return n // batch_size if drop_last else -(-n // batch_size)


def iterate_batches(
    split: ImageSplit,
    *,
    batch_size: int,
    device: torch.device,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    augment: str = "none",
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(images, labels)`` batches in pixel space.

    The split's ``uint8`` images are moved to ``device`` once per call; each
    batch is converted to float and augmented there.

    Args:
        split: The examples.
        batch_size: Examples per batch (the last one may be smaller unless
            ``drop_last``).
        device: Where the batches live.
        shuffle: Draw a new permutation from ``generator``.
        generator: CPU generator for order and augmentation; required when
            ``shuffle`` or ``augment`` is used, so runs are reproducible.
        augment: A preset name from :data:`imgclf.data.augment.PRESETS`.
        drop_last: Skip the final incomplete batch.

    Yields:
        ``images``: ``float32`` ``(B, C, H, W)`` in ``[0, 1]`` on ``device``;
        ``labels``: ``int64`` ``(B,)`` on ``device``.
    """
    augmentation = PRESETS[augment]
    if (shuffle or augmentation is not None) and generator is None:
        raise ValueError("iterate_batches needs a generator to shuffle or augment reproducibly")
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    images = split.images.to(device, non_blocking=True)
    labels = split.labels.to(device, non_blocking=True)
    order = order.to(device)
    aug_gen = generator
    if augmentation is not None and device.type != "cpu":
        # Augmentation draws on the batch's device; derive that generator from the CPU one.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        aug_gen = torch.Generator(device=device)
        aug_gen.manual_seed(seed)
    for start in range(0, num_batches(n, batch_size, drop_last=drop_last) * batch_size, batch_size):
        rows = order[start : start + batch_size]
        batch = images[rows].float().div_(255.0)
        if augmentation is not None:
            batch = augmentation(batch, aug_gen)
        yield batch, labels[rows]
