"""What a ``--dataset`` value names, told from the name and the file system alone: a built-in data set, an
image folder, a labels file, a Hugging Face data set on disk, or nothing. This module imports neither torch
nor NumPy, so the command line refuses an unknown name before anything heavy loads."""

from __future__ import annotations

import os
from pathlib import Path

from imgclf.errors import unknown_choice

#: A labels file's suffix and its delimiter (None: sniffed among ``,`` ``;`` TAB).
LABELS_SUFFIXES = {".csv": None, ".tsv": "\t"}
#: A Parquet file of a Hugging Face data set.
PARQUET_SUFFIX = ".parquet"


def looks_like_folder(dataset: str) -> bool:
    """True when ``dataset`` names a path rather than a registered data set."""
    return os.sep in dataset or "/" in dataset or dataset.startswith((".", "~")) or Path(dataset).is_dir()


def is_labels_file(dataset: str) -> bool:
    """True when ``dataset`` names a labels file (by its suffix, ``.csv`` or ``.tsv``)."""
    return Path(dataset).suffix.lower() in LABELS_SUFFIXES


def is_data_file(dataset: str) -> bool:
    """True when ``dataset`` names a file that holds a data set: a labels file (``.csv``, ``.tsv``) or a
    Parquet file."""
    return is_labels_file(dataset) or Path(dataset).suffix.lower() == PARQUET_SUFFIX


def dataset_location(dataset: str, data_dir: Path, builtin: tuple[str, ...]) -> Path | None:
    """Where a ``--dataset`` value that is not built in points: the path as given (a folder, a data file)
    or a folder of that name inside ``data_dir``; None for a built-in name.

    Args:
        builtin: The registered data sets' names.

    Raises:
        UsageError: If it is none of these: an unknown name, with the valid choices and the closest one.
    """
    if dataset in builtin:
        return None
    if is_data_file(dataset) or looks_like_folder(dataset):
        return Path(dataset).expanduser()
    if dataset and (data_dir / dataset).is_dir():
        return data_dir / dataset
    raise unknown_choice("dataset", dataset, [*builtin, "PATH (an image folder or a saved Hugging Face data set)",
                                              "FILE.csv or .tsv (a labels file)", "FILE.parquet"])

