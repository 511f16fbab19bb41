"""Data sets, splits and batches. Images leave this package as ``float32``
``(B, C, H, W)`` in ``[0, 1]``."""

from imgclf.data.augment import AUGMENTATIONS
from imgclf.data.batches import iterate_batches, num_batches
from imgclf.data.builtin import DATASETS, missing_files
from imgclf.data.containers import DatasetSpec, DataSplits, ImageSplit
from imgclf.data.loading import load_data, resolve_data_dir, split_indices, stratified_subset

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
