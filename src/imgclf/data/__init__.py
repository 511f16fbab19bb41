"""Data sets, splits and batches. Images leave this package as ``float32``
``(B, C, H, W)`` in ``[0, 1]``.

The names of the built-in data sets and augmentations load without torch; the rest on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgclf.data.augment import AUGMENTATIONS
from imgclf.data.builtin import DATASETS, missing_files, resolve_data_dir
from imgclf.lazy import lazy_exports

if TYPE_CHECKING:
    from imgclf.data.batches import iterate_batches, num_batches
    from imgclf.data.containers import DatasetSpec, DataSplits, ImageSplit
    from imgclf.data.loading import load_data, split_indices, stratified_subset

__getattr__, __dir__ = lazy_exports(__name__, {
    "imgclf.data.batches": ("iterate_batches", "num_batches"),
    "imgclf.data.containers": ("DatasetSpec", "DataSplits", "ImageSplit"),
    "imgclf.data.loading": ("load_data", "split_indices", "stratified_subset"),
})

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "DataSplits",
    "DatasetSpec",
    "ImageSplit",
    "iterate_batches",
    "load_data",
    "missing_files",
    "num_batches",
    "resolve_data_dir",
    "split_indices",
    "stratified_subset",
]
