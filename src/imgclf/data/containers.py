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


@dataclass
class ImageSplit:
    """One split (train, val or test) held in memory.

    Attributes:
        images: ``uint8`` tensor of shape ``(N, C, H, W)``, values 0..255. Use
            :meth:`float_images` for the pipeline's pixel space.
        labels: ``int64`` tensor of shape ``(N,)``, values in ``[0, K)``.
        source: Which pool of the data set the rows come from (``"train"``,
            ``"val"``, ``"test"``).
        indices: ``int64`` array of shape ``(N,)``: row ``i`` is example
            ``indices[i]`` of that pool. Saved in the run folder so later stages
            see exactly the same examples.
    """

    images: torch.Tensor
    labels: torch.Tensor
    source: str
    indices: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def float_images(self, rows: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
        """Images as ``float32`` ``(N, C, H, W)`` in ``[0, 1]`` (optionally only ``rows``)."""
        images = self.images if rows is None else self.images[torch.as_tensor(rows, dtype=torch.long)]
        return images.float().div_(255.0)

    def subset(self, rows: np.ndarray) -> ImageSplit:
        """The split restricted to ``rows`` (positions in this split)."""
        rows_t = torch.as_tensor(rows, dtype=torch.long)
        return ImageSplit(self.images[rows_t], self.labels[rows_t], self.source, self.indices[rows])


@dataclass
class DataSplits:
    """A data set ready for training: its spec and its three splits.

    Attributes:
        spec: Classes, shape and normalization statistics.
        train, val, test: The splits (disjoint).
        bad_files: ``(path, reason)`` for every file that was skipped.
        notes: Human-readable remarks made while loading (warnings), in order.
    """

    spec: DatasetSpec
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    bad_files: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
