"""Hugging Face ``datasets`` data sets on disk: a folder written by ``save_to_disk``, or Parquet files.

Two layouts are read (the optional extra ``pip install 'imgclf[hf]'`` brings the ``datasets`` package)::

    saved/                        hub-snapshot/                     one.parquet
      dataset_dict.json             data/train-00000-of-00002.parquet
      train/ data-00000-of-00001.arrow  data/train-00001-of-00002.parquet
      test/  ...                    data/test-00000-of-00001.parquet

A ``save_to_disk`` folder holds a ``DatasetDict`` (one sub-folder per split) or a single ``Dataset``
(all training data). In a folder of Parquet files the splits are told by the file and folder names,
as ``datasets.load_dataset`` tells them (``train``, ``validation``/``valid``/``val``, ``test``);
one Parquet file is all training data. Splits other than train, validation and test are left out,
with a note. The images stay encoded in the data set's own files (memory-mapped Arrow, or Parquet
read once) and go through the same decoding, bad-file policy, cache and ``imgclf data check`` as the
files of an image folder.

The image column is the one of feature type ``Image`` (``--image-column`` to choose); it may hold
the encoded bytes or the path of a file. The label column is the first ``ClassLabel`` column, else
the first of :data:`imgclf.data.labels_file.LABEL_COLUMNS` (``--label-column`` to choose); a
``ClassLabel``'s names are the class names in their own order, other labels are sorted as a labels
file's are. Rows without a label (``-1`` or null, the way unlabelled test splits are published) are
left out with a note; an evaluation split without any label is left out whole.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclf.data.folder import ImageFiles, StoredImage
from imgclf.data.labels_file import LABEL_COLUMNS, SPLIT_VALUES, sort_classes
from imgclf.data.names import PARQUET_SUFFIX
from imgclf.errors import UsageError

if TYPE_CHECKING:
    import pyarrow as pa

#: Files whose presence marks a folder written by ``save_to_disk`` (a DatasetDict's, a Dataset's).
SAVED_MARKERS = ("dataset_dict.json", "state.json")
#: Column names tried, in order, for the images when no column has the ``Image`` feature type.
IMAGE_COLUMNS = ("image", "img", "picture", "photo")
INSTALL_HINT = "pip install 'imgclf[hf]' (the datasets package)"


def is_hf_dataset(path: Path) -> bool:
    """True when ``path`` is a Parquet file, a ``save_to_disk`` folder, or a folder holding Parquet files
    (and no image folder's ``train/`` sub-folder of class folders)."""
    if path.suffix.lower() == PARQUET_SUFFIX:
        return True
    if not path.is_dir():
        return False
    if any((path / marker).is_file() for marker in SAVED_MARKERS):
        return True
    return next(_parquet_files(path), None) is not None


def _parquet_files(folder: Path) -> Iterator[Path]:
    return (p for p in sorted(folder.rglob(f"*{PARQUET_SUFFIX}")) if not any(
        part.startswith(".") for part in p.relative_to(folder).parts))


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise UsageError(f"reading a Hugging Face data set needs {INSTALL_HINT}") from None
    datasets.disable_progress_bars()  # imgclf shows its own
    return datasets


def _file_state(files: list[Path]) -> str:
    """Size and modification time of each file, hashed: changes when a file is rewritten."""
    digest = hashlib.sha256()
    for file in sorted(files):
        stat = file.stat()
        digest.update(f"{file.absolute()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _saved_splits(path: Path, datasets: Any) -> tuple[dict[str, tuple[pa.Table, Any]], list[Path]]:
    """``{split: (Arrow table, Features)}`` and the Arrow files of a ``save_to_disk`` folder."""
    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError, KeyError) as error:
        raise UsageError(f"Hugging Face data set {str(path)!r} cannot be loaded with load_from_disk: "
                         f"{type(error).__name__}: {error}") from None
    parts = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    files = [Path(f["filename"]) for part in parts.values() for f in part.cache_files]
    return {name: (part.with_format("arrow")[:], part.features) for name, part in parts.items()}, files


def _parquet_splits(path: Path, datasets: Any) -> tuple[dict[str, tuple[pa.Table, Any]], list[Path]]:
    """``{split: (Arrow table, Features)}`` and the files of one Parquet file or a folder of them,
    the splits told by the file names as ``datasets.load_dataset`` tells them."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets.data_files import get_data_patterns, resolve_pattern

    if path.is_file():
        by_split = {"train": [path]}
    else:
        try:
            patterns = get_data_patterns(str(path))
        except (datasets.data_files.EmptyDatasetError, FileNotFoundError) as error:
            raise UsageError(f"no data files found in {str(path)!r}: {error}") from None
        by_split = {}
        for split, split_patterns in patterns.items():
            matched: set[Path] = set()
            for pattern in split_patterns:  # (a split's patterns are alternatives; most match nothing)
                try:
                    matched.update(Path(f).resolve() for f in resolve_pattern(pattern, str(path))
                                   if f.endswith(PARQUET_SUFFIX))
                except FileNotFoundError:
                    continue
            if matched:
                by_split[str(split)] = sorted(matched)
        every = {f.resolve() for f in _parquet_files(path)}
        unassigned = every - {f for found in by_split.values() for f in found}
        if unassigned:
            raise UsageError(f"cannot tell the split of {len(unassigned)} Parquet file(s) under {str(path)!r} "
                             f"(the first: {str(min(unassigned))!r}); name files or folders train, validation "
                             "or test (as train-00000-of-00001.parquet or train/0000.parquet)")
    tables: dict[str, tuple[pa.Table, Any]] = {}
    for split, files in by_split.items():
        try:
            parts = [pq.read_table(file, memory_map=True) for file in files]
            table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        except (pa.ArrowInvalid, OSError) as error:
            raise UsageError(f"Parquet file(s) of the {split} split under {str(path)!r} cannot be read: "
                             f"{error}") from None
        tables[split] = (table, datasets.Features.from_arrow_schema(table.schema))
    return tables, [f for found in by_split.values() for f in found]


def _pick_column(features: Any, given: str | None, kind: str, candidates: tuple[str, ...], flag: str,
                 source: Path) -> str:
    names = list(features)
    if given is not None:
        if given not in features:
            raise UsageError(f"Hugging Face data set {str(source)!r} has no column {given!r}; its columns: "
                             f"{', '.join(names)}")
        return given
    typed = [name for name, feature in features.items() if type(feature).__name__ == kind]
    if typed:
        return typed[0]
    lowered = [name.lower() for name in names]
    for candidate in candidates:
        if candidate in lowered:
            return names[lowered.index(candidate)]
    what = "image" if kind == "Image" else "label"
    raise UsageError(f"Hugging Face data set {str(source)!r}: no {what} column among {', '.join(names)} "
                     f"(none of type {kind}, none named {', '.join(candidates)}); name it with {flag}")


class _ImageColumn:
    """Random access to one split's encoded images: each row's bytes, else the file its path names."""

    def __init__(self, column: pa.ChunkedArray, name: str, base: Path, source: Path):
        import pyarrow as pa

        self.base, self.source, self.name = base, source, name
        if pa.types.is_struct(column.type) and column.type.get_field_index("bytes") >= 0:
            import pyarrow.compute as pc

            self.bytes = pc.struct_field(column, "bytes")
            has_path = column.type.get_field_index("path") >= 0
            self.paths = pc.struct_field(column, "path") if has_path else None
        elif pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
            self.bytes, self.paths = column, None
        else:
            raise UsageError(f"column {name!r} of {str(source)!r} holds {column.type}, not encoded images "
                             "(an Image feature, or bytes); name the image column with --image-column")
        self.chunks = self.bytes.chunks
        self.path_chunks = self.paths.chunks if self.paths is not None else None
        self.starts = [0]
        for chunk in self.chunks:
            self.starts.append(self.starts[-1] + len(chunk))

    def read(self, row: int) -> bytes:
        """The encoded image of ``row``.

        Raises:
            OSError: The row has neither bytes nor a readable file.
        """
        k = bisect.bisect_right(self.starts, row) - 1
        data = self.chunks[k][row - self.starts[k]].as_py()
        if data is not None:
            return data
        path = self.path_chunks[k][row - self.starts[k]].as_py() if self.path_chunks is not None else None
        if not path:
            raise OSError(f"row {row} of column {self.name!r} holds no image")
        file = Path(path) if Path(path).is_absolute() else self.base / path
        return file.read_bytes()


def _labels(column: pa.ChunkedArray, feature: Any) -> tuple[list[Any], list[str] | None]:
    """Each row's label (None where it has none) and the ClassLabel names, if the column has them."""
    values = column.to_pylist()
    names = list(feature.names) if type(feature).__name__ == "ClassLabel" else None
    unlabeled = {None, -1} if names is not None or all(isinstance(v, int) or v is None for v in values) else {None}
    return [None if v in unlabeled or isinstance(v, float) and v != v else v for v in values], names


def scan_hf_dataset(path: Path, *, image_column: str | None = None, label_column: str | None = None) -> ImageFiles:
    """List the images and labels of a Hugging Face data set on disk, without decoding them.

    Args:
        path: A ``save_to_disk`` folder, a Parquet file or a folder of Parquet files (see the module).
        image_column: The column of images; None: the first of feature type ``Image``, else one named
            as in :data:`IMAGE_COLUMNS`.
        label_column: The column of labels; None: the first ``ClassLabel``, else one named as in
            :data:`imgclf.data.labels_file.LABEL_COLUMNS`.

    Returns:
        The listing: each file a :class:`imgclf.data.folder.StoredImage` named ``PATH[split][row]``.

    Raises:
        UsageError: The path does not exist; ``datasets`` is not installed; the data set cannot be loaded;
            a column is missing or holds no images; no train split; a split of unknown Parquet files;
            labels that are not whole numbers, text or ClassLabel indices; fewer than two classes with
            training images.
    """
    if not path.exists():
        raise UsageError(f"Hugging Face data set {str(path)!r} does not exist")
    datasets = _import_datasets()
    saved = path.is_dir() and any((path / marker).is_file() for marker in SAVED_MARKERS)
    tables, files = _saved_splits(path, datasets) if saved else _parquet_splits(path, datasets)
    notes: list[str] = []
    splits = _split_names(tables, path, notes)
    _, features = tables[splits["train"]]
    image_at = _pick_column(features, image_column, "Image", IMAGE_COLUMNS, "--image-column", path)
    label_at = _pick_column(features, label_column, "ClassLabel", LABEL_COLUMNS, "--label-column", path)
    if image_at == label_at:
        raise UsageError(f"Hugging Face data set {str(path)!r}: the image and the label are the same column "
                         f"({image_at!r})")
    base = path if path.is_dir() else path.parent
    rows: dict[str, list[tuple[int, Any]]] = {}  # split -> (row, label) of labelled rows
    columns: dict[str, _ImageColumn] = {}
    class_names: list[str] | None = None
    for split in [str(s) for s in ("train", "val", "test") if s in splits]:
        table, split_features = tables[splits[split]]
        labelled, names = _labelled_rows(table, split_features, image_at, label_at, path, splits[split],
                                         None if split == "train" else class_names, notes)
        if split == "train":
            class_names = names
        if labelled is not None:
            rows[split] = labelled
            columns[split] = _ImageColumn(table.column(image_at), image_at, base, path)
    class_names, position = _class_positions(rows, class_names, label_at, path)
    state = _file_state(files)
    listing: dict[str, list[tuple[Path | StoredImage, int]]] = {}
    for split, labelled in rows.items():
        read: Callable[[int], bytes] = columns[split].read
        listing[split] = [(StoredImage(f"{path}[{splits[split]}][{row}]", state, partial(read, row)), position(label))
                          for row, label in labelled]
    return ImageFiles(path, class_names, listing, notes)


def _split_names(tables: dict[str, Any], path: Path, notes: list[str]) -> dict[str, str]:
    """``{imgclf split: the data set's split}`` (train, val, test); other splits are noted and left out.

    Raises:
        UsageError: If there is no train split.
    """
    splits: dict[str, str] = {}
    for name in tables:
        split = SPLIT_VALUES.get(name.lower())
        if split is None or split in splits:
            notes.append(f"split {name!r} of {str(path)!r} is left out (imgclf uses train, validation and test)")
        else:
            splits[split] = name
    if "train" not in splits:
        raise UsageError(f"Hugging Face data set {str(path)!r} has no train split; its splits: {', '.join(tables)}")
    return splits


def _labelled_rows(table: Any, features: dict[str, Any], image_at: str, label_at: str, path: Path, name: str,
                   class_names: list[str] | None, notes: list[str]
                   ) -> tuple[list[tuple[int, Any]] | None, list[str] | None]:
    """One split's ``(row, label)`` pairs of labelled rows (None: the split has no labels and is left out,
    noted) and the names its ClassLabel column gives (None for plain labels). ``class_names``: the train
    split's (None while the train split itself is read: its own then).

    Raises:
        UsageError: If a column is missing, or the labels are not whole numbers, text or ClassLabel indices.
    """
    for column in (image_at, label_at):
        if column not in features:
            raise UsageError(f"the {name} split of {str(path)!r} has no column {column!r}; its columns: "
                             f"{', '.join(features)}")
    labels, names = _labels(table.column(label_at), features[label_at])
    indexed = names if class_names is None else class_names
    bad = sorted({type(v).__name__ for v in labels if v is not None and not isinstance(v, (int, str))})
    if bad or (indexed is not None and any(isinstance(v, str) for v in labels)):
        raise UsageError(f"column {label_at!r} of {str(path)!r} holds {', '.join(bad) or 'text'} labels; "
                         "labels are whole numbers, text or ClassLabel indices (name the label column with "
                         "--label-column)")
    labelled = [(row, label) for row, label in enumerate(labels) if label is not None]
    if not labelled and name != "train":  # (a train split without labels fails with the class count)
        notes.append(f"the {name} split of {str(path)!r} has no labels and is left out")
        return None, names
    if len(labelled) < len(labels):
        notes.append(f"{len(labels) - len(labelled)} row(s) of the {name} split of {str(path)!r} have "
                     "no label and are left out")
    return labelled, names


def _class_positions(rows: dict[str, list[tuple[int, Any]]], class_names: list[str] | None, label_at: str,
                     path: Path) -> tuple[list[str], Callable[[Any], int]]:
    """The class names (a ClassLabel's, else the train split's labels sorted) and a label's class index.

    Raises:
        UsageError: On validation or test labels that no train row has, or an index outside the ClassLabel.
    """
    if class_names is None:
        train_labels = {label for _, label in rows["train"]}
        others = sorted({str(label) for split in rows for _, label in rows[split]} - {str(v) for v in train_labels})
        if others:
            raise UsageError(f"Hugging Face data set {str(path)!r}: labels in validation or test rows that no train "
                             f"row has: {', '.join(others[:10])}")
        names = sort_classes({str(label) for label in train_labels})
        index = {name: k for k, name in enumerate(names)}
        return names, lambda label: index[str(label)]
    known = len(class_names)

    def position(label: Any) -> int:
        if not 0 <= label < known:
            raise UsageError(f"column {label_at!r} of {str(path)!r} holds label {label}; its ClassLabel has "
                             f"{known} names (0 to {known - 1})")
        return int(label)

    return class_names, position
