"""Mini-batches from a split, with batch-level augmentation.

Two paths deliver the same batches:

* **in memory** (the split is one ``uint8`` tensor): rows are gathered from the
  tensor on the training device, with no per-image Python work (the approach
  of airbench's ``CifarLoader``, Keller Jordan 2024);
* **from disk** (the split is :class:`~imgclf.data.containers.LazyImages` over
  the memory-mapped decoded-image cache): a ``DataLoader`` whose worker
  processes read whole batches of rows, with pinned memory on CUDA and
  persistent workers.

Both draw the order and the augmentation from the same generator in the same
way and augment in the main process with the same functions, so for a given
seed they yield identical batches.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from imgclf.data.augment import build_augmentation
from imgclf.data.containers import ImageSplit, LazyImages


def num_batches(n: int, batch_size: int, *, drop_last: bool = False) -> int:
    """How many batches :func:`iterate_batches` yields for ``n`` examples."""
    return n // batch_size if drop_last else -(-n // batch_size)


def _as_is(batch):
    return batch


class _Rows(Dataset):
    """Whole batches of rows from :class:`LazyImages` (one read per batch, in a worker)."""

    def __init__(self, images: LazyImages):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitems__(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images.take(np.asarray(positions)), torch.as_tensor(positions)

    def __getitem__(self, position: int) -> torch.Tensor:
        return self.images.take(np.asarray([position]))[0]


class _EpochBatches:
    """A batch sampler whose order is set before each epoch."""

    def __init__(self, batch_size: int):
        self.batch_size, self.order = batch_size, torch.arange(0)

    def __iter__(self) -> Iterator[list[int]]:
        for start in range(0, len(self.order), self.batch_size):
            yield self.order[start : start + self.batch_size].tolist()

    def __len__(self) -> int:
        return num_batches(len(self.order), self.batch_size)


def default_workers() -> int:
    """Worker processes for the disk path: the cores, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def _loader(images: LazyImages, batch_size: int, device: torch.device) -> tuple[DataLoader, _EpochBatches]:
    """One DataLoader per (split, batch size, device), kept so its workers persist across epochs."""
    cache = images.loaders
    key = (batch_size, device.type)
    if key not in cache:
        sampler = _EpochBatches(batch_size)
        workers = default_workers()
        # The workers only read rows (no randomness), but a DataLoader without a generator of its own
        # seeds them from the global generator when its first iterator starts: that would shift the
        # dropout stream of a resumed run, whose first epoch here is not the run's first.
        loader = DataLoader(
            _Rows(images), batch_sampler=sampler, num_workers=workers, collate_fn=_as_is,
            pin_memory=device.type == "cuda", persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(0),
        )
        cache[key] = (loader, sampler)
    return cache[key]


def iterate_batches(
    split: ImageSplit,
    *,
    batch_size: int,
    device: torch.device,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    augment: str = "none",
    drop_last: bool = False,
    sample_weights: torch.Tensor | None = None,
    shard: tuple[int, int] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(images, labels)`` batches in pixel space.

    Args:
        split: The examples (in memory or on disk).
        batch_size: Examples per batch (the last one may be smaller unless
            ``drop_last``).
        device: Where the batches live.
        shuffle: Draw a new permutation from ``generator``.
        generator: CPU generator for order and augmentation; required when
            ``shuffle``, ``augment`` or ``sample_weights`` is used, so runs are
            reproducible.
        augment: An augmentation setting (:func:`imgclf.data.augment.build_augmentation`).
        drop_last: Skip the final incomplete batch.
        sample_weights: ``(N,)`` non-negative weights: draw ``N`` examples with
            replacement in proportion to them (class-balanced sampling)
            instead of a permutation.
        shard: ``(rank, world_size)``: this process takes every ``world_size``-th
            example of the epoch's order, starting at ``rank``, from an order cut
            to a multiple of ``world_size`` so every process gets as many.

    Yields:
        ``images``: ``float32`` ``(B, C, H, W)`` in ``[0, 1]`` on ``device``;
        ``labels``: ``int64`` ``(B,)`` on ``device``.
    """
    augmentation = build_augmentation(augment)
    if (shuffle or augmentation is not None or sample_weights is not None) and generator is None:
        raise ValueError("iterate_batches needs a generator to shuffle, sample or augment reproducibly")
    n = len(split)
    if sample_weights is not None:
        order = torch.multinomial(sample_weights.double(), n, replacement=True, generator=generator)
    elif shuffle:
        order = torch.randperm(n, generator=generator)
    else:
        order = torch.arange(n)
    if shard is not None:
        rank, world = shard
        order = order[: (n // world) * world][rank::world]
    if drop_last:
        order = order[: (len(order) // batch_size) * batch_size]
    aug_gen = generator
    if augmentation is not None and device.type != "cpu":
        # Augmentation draws on the batch's device; derive that generator from the CPU one.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        aug_gen = torch.Generator(device=device)
        aug_gen.manual_seed(seed)

    images, labels = split.on(device)
    if isinstance(images, torch.Tensor):
        device_order = order.to(device)
        raw = (
            (images[rows], rows)
            for rows in (device_order[s : s + batch_size] for s in range(0, len(order), batch_size))
        )
    else:
        loader, sampler = _loader(images, batch_size, device)
        sampler.order = order
        raw = ((block.to(device, non_blocking=True), rows.to(device)) for block, rows in loader)
    for block, rows in raw:
        batch = block.float().div_(255.0)
        if augmentation is not None and aug_gen is not None:  # (a generator is required with augmentation)
            batch = augmentation(batch, aug_gen)
        yield batch, labels[rows]
