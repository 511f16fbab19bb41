"""Plain containers the data layer hands to the rest of the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class DatasetSpec:
    """What a model needs to know about a data set.

    Attributes:
        name: Registered name (``"mnist"``) or the image folder's path.
        class_names: One name per class; index ``k`` is label ``k``.
        channels: 1 (grey) or 3 (RGB).
        image_size: ``(H, W)`` in pixels, as the model sees them.
        mean: Per-channel mean of the training images, in ``[0, 1]`` units.
        std: Per-channel standard deviation of the training images, ``> 0``.
    """

    name: str
    class_names: tuple[str, ...]
    channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return (self.channels, *self.image_size)


class LazyImages:
    """``uint8`` images ``(N, C, H, W)`` read on demand from a memory-mapped array.

    Used for splits larger than the memory limit: the decoded-image cache stays
    on disk and only the rows asked for are read.

    Args:
        array: ``uint8`` array ``(M, C, H, W)``, typically a read-only memmap.
        rows: ``int64`` ``(N,)``: row ``i`` of this object is ``array[rows[i]]``.
    """

    def __init__(self, array: np.ndarray, rows: np.ndarray):
        self.array, self.rows = array, np.asarray(rows, dtype=np.int64)
        self.loaders: dict = {}  # DataLoaders kept by the batch iterator so their workers persist

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.array.shape[1:])

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, positions: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The images at ``positions`` as a ``uint8`` tensor ``(len(positions), C, H, W)``."""
        rows = self.rows[np.asarray(positions, dtype=np.int64)]
        order = np.argsort(rows, kind="stable")  # read the file front to back
        block = np.asarray(self.array[rows[order]])
        out = np.empty_like(block)
        out[order] = block
        return torch.from_numpy(out)


@dataclass
class ImageSplit:
    """One split (train, val or test).

    Attributes:
        images: ``uint8`` images ``(N, C, H, W)``, values 0..255: a tensor in
            memory, or :class:`LazyImages` when the split exceeds the memory
            limit. Use :meth:`float_images` for the pipeline's pixel space.
        labels: ``int64`` tensor of shape ``(N,)``, values in ``[0, K)``.
        source: Which pool of the data set the rows come from (``"train"``,
            ``"val"``, ``"test"``).
        indices: ``int64`` array of shape ``(N,)``: row ``i`` is example
            ``indices[i]`` of that pool. Saved in the run folder so later stages
            see exactly the same examples.
    """

    images: torch.Tensor | LazyImages
    labels: torch.Tensor
    source: str
    indices: np.ndarray
    _on_device: dict = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def on(self, device: torch.device) -> tuple[torch.Tensor | LazyImages, torch.Tensor]:
        """``(images, labels)`` on ``device``, copied there once and kept.

        An in-memory split stays on the training device for the whole run (a
        GPU gets one copy, not one per epoch); a split on disk keeps its images
        there and only its labels move.
        """
        if device.type == "cpu":
            return self.images, self.labels
        key = str(device)
        if key not in self._on_device:
            images = self.images.to(device, non_blocking=True) if isinstance(self.images, torch.Tensor) else self.images
            self._on_device[key] = (images, self.labels.to(device, non_blocking=True))
        return self._on_device[key]

    @property
    def in_memory(self) -> bool:
        return isinstance(self.images, torch.Tensor)

    def uint8_images(self, rows: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
        """Images (all, or only ``rows``) as a ``uint8`` tensor ``(N, C, H, W)``."""
        if rows is None:
            rows = np.arange(len(self))
        if isinstance(self.images, torch.Tensor):
            return self.images[torch.as_tensor(rows, dtype=torch.long)]
        return self.images.take(np.asarray(rows))

    def float_images(self, rows: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
        """Images as ``float32`` ``(N, C, H, W)`` in ``[0, 1]`` (optionally only ``rows``)."""
        return self.uint8_images(rows).float().div_(255.0)

    def fingerprint(self) -> str:
        """The SHA-256 (hex) of the split's labels and image bytes, in order: what a run folder records, so that
        later stages can tell the data set changed under them (images added, removed, replaced or relabelled).
        A split read from disk (:class:`LazyImages`) hashes every label but the pixels of 4,096 evenly spaced
        images only, so that opening a run does not read a large data set whole."""
        import hashlib

        digest = hashlib.sha256(np.ascontiguousarray(self.labels.numpy(), dtype=np.int64).tobytes())
        rows = np.arange(len(self)) if self.in_memory else \
            np.unique(np.linspace(0, len(self) - 1, num=min(len(self), 4096)).round().astype(np.int64))
        for first in range(0, len(rows), 4096):
            digest.update(self.uint8_images(rows[first:first + 4096]).contiguous().numpy().tobytes())
        return digest.hexdigest()

    def subset(self, rows: np.ndarray) -> ImageSplit:
        """The split restricted to ``rows`` (positions in this split)."""
        rows_t = torch.as_tensor(rows, dtype=torch.long)
        images = self.images[rows_t] if isinstance(self.images, torch.Tensor) else \
            LazyImages(self.images.array, self.images.rows[rows])
        return ImageSplit(images, self.labels[rows_t], self.source, self.indices[rows])


@dataclass
class DataSplits:
    """A data set ready for training: its spec and its three splits.

    Attributes:
        spec: Classes, shape and normalization statistics.
        train, val, test: The splits (disjoint).
        bad_files: ``(path, reason)`` for every file that was skipped.
        notes: Human-readable remarks made while loading (warnings), in order.
        origins: ``{split: where its examples come from}``, in words (see
            :func:`imgclf.data.loading.describe_splits`).
    """

    spec: DatasetSpec
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    bad_files: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    origins: dict[str, str] = field(default_factory=dict)
