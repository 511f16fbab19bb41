"""Data sets listed in a labels file: a CSV or TSV of image paths and class labels.

The layout of many published data sets (Kaggle's ``train.csv`` beside a
``train/`` folder of images)::

    path,label              id,breed                 file<TAB>class<TAB>split
    cats/001.jpg,cat        0a1b2c,beagle            a.png<TAB>cat<TAB>train
    dogs/002.jpg,dog        0a1b2d,pug               b.png<TAB>dog<TAB>test

The first row names the columns. Paths are relative to the image root (by
default the labels file's folder) unless absolute; a path without an extension
is looked up with each image extension (Kaggle's ``id`` columns). An optional
``split`` column assigns rows to ``train``, ``val`` (also ``valid``,
``validation``) or ``test``; without one every row is training data and the
validation and test splits are drawn from it. Files that are listed but missing
or undecodable go through the same bad-file policy as an image folder's.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from imgclf.data.folder import IMAGE_EXTENSIONS, ImageFiles, ImageSource
from imgclf.data.names import LABELS_SUFFIXES
from imgclf.errors import UsageError

#: File name suffixes read as labels files, and their delimiter (None: sniffed from , ; TAB).
#: Column names tried, in order, when no path column is given (compared without case).
PATH_COLUMNS = ("path", "filepath", "file_path", "file", "filename", "file_name", "image", "image_path",
                "image_id", "img", "id", "fname")
#: Column names tried, in order, when no label column is given (compared without case).
LABEL_COLUMNS = ("label", "labels", "class", "class_name", "category", "target", "y")
#: The optional column that assigns rows to splits, and the values it may hold.
SPLIT_COLUMN = "split"
SPLIT_VALUES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
#: Share of listed files that may be missing before the image root is taken to be wrong.
MISSING_LIMIT = 0.5


def _read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """The header and the rows of a labels file (blank lines dropped)."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: the byte-order mark spreadsheets write
    except FileNotFoundError:
        raise UsageError(f"labels file {str(path)!r} does not exist") from None
    except UnicodeDecodeError:
        raise UsageError(f"labels file {str(path)!r} is not UTF-8 text; save it as UTF-8 CSV") from None
    except OSError as error:
        raise UsageError(f"labels file {str(path)!r} cannot be read: {error.strerror or error}") from None
    delimiter = LABELS_SUFFIXES.get(path.suffix.lower())
    if delimiter is None:
        try:
            delimiter = csv.Sniffer().sniff(text[:65536], delimiters=",;\t").delimiter
        except csv.Error:
            delimiter = ","  # a single column, or nothing to tell by
    try:
        rows = [row for row in csv.reader(text.splitlines(), delimiter=delimiter) if any(cell.strip() for cell in row)]
    except csv.Error as error:
        raise UsageError(f"labels file {str(path)!r} is not valid CSV: {error}") from None
    if len(rows) < 2:
        raise UsageError(f"labels file {str(path)!r} needs a header row naming its columns and at least one row "
                         "of a path and a label")
    return [cell.strip() for cell in rows[0]], rows[1:]


def _column(header: list[str], given: str | None, candidates: tuple[str, ...], what: str, flag: str,
            path: Path) -> int:
    """Index of the column named ``given``, else of the first of ``candidates`` in the header."""
    lowered = [name.lower() for name in header]
    if given is not None:
        if given in header:
            return header.index(given)
        if given.lower() in lowered:
            return lowered.index(given.lower())
        raise UsageError(f"labels file {str(path)!r} has no column {given!r}; its columns: {', '.join(header)}")
    for name in candidates:
        if name in lowered:
            return lowered.index(name)
    raise UsageError(f"labels file {str(path)!r}: no {what} column among {', '.join(header)}; name it with {flag} "
                     f"(looked for: {', '.join(candidates)})")


def _locate(root: Path, name: str) -> Path:
    """The file a path cell names: as written, else with an image extension when it has none."""
    path = Path(name).expanduser()
    path = path if path.is_absolute() else root / path
    if path.suffix.lower() in IMAGE_EXTENSIONS or path.exists():
        return path
    for suffix in sorted(IMAGE_EXTENSIONS):
        for candidate in (path.with_name(path.name + suffix), path.with_name(path.name + suffix.upper())):
            if candidate.is_file():
                return candidate
    return path


def _inside(file: Path, root: Path) -> bool:
    """Whether ``file`` lies under ``root`` as written (``..`` resolved lexically, so a data folder that is
    itself a link still works)."""
    return os.path.normpath(os.path.abspath(file)).startswith(os.path.normpath(os.path.abspath(root)) + os.sep)


def sort_classes(labels: set[str]) -> list[str]:
    """Class names sorted as numbers when every label is an integer (so 10 follows 9), else as text."""
    if all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def scan_labels_file(
    path: Path, *, image_root: Path | None = None, path_column: str | None = None, label_column: str | None = None,
    paths_outside_root: bool = False,
) -> ImageFiles:
    """List the images and labels a labels file names, without decoding them.

    Args:
        path: The CSV (delimiter sniffed among ``,`` ``;`` TAB) or TSV file, UTF-8, header first.
        image_root: Folder the relative paths start from; None: the labels file's folder.
        path_column, label_column: Column names (matched exactly, else without case); None: the
            first of :data:`PATH_COLUMNS` / :data:`LABEL_COLUMNS` in the header, else, for a file of
            exactly two columns, the first and the second.
        paths_outside_root: Read paths that leave the image root (absolute ones, or through ``..``);
            without it such a row is refused, so that a labels file cannot make imgclf read files elsewhere.

    Returns:
        The listing; class names are the distinct labels, sorted (as numbers when all are integers).
        A file listed more than once is kept once (its first row), with a note.

    Raises:
        UsageError: The file cannot be read or parsed, a column is missing, a row lacks a path or
            a label, a split value is unknown, the image root is not a folder, a path leaves the image
            root (without ``paths_outside_root``), most listed files do not exist (the wrong image
            root), or fewer than two classes have training images.
    """
    header, rows = _read_rows(path)
    root = (image_root if image_root is not None else path.parent).expanduser()
    if not root.is_dir():
        raise UsageError(f"image root {str(root)!r} of labels file {str(path)!r} is not a folder; set --image-root")
    path_at, label_at, split_at = _columns(header, path, path_column, label_column)
    entries, repeated = _entries(rows, header, path, root, (path_at, label_at, split_at),
                                 paths_outside_root=paths_outside_root)

    missing = [file for _, file, _ in entries if not file.exists()]
    if len(missing) > MISSING_LIMIT * len(entries):
        raise UsageError(f"{len(missing)} of the {len(entries)} files listed in {str(path)!r} do not exist under "
                         f"{str(root)!r} (the first: {str(missing[0])!r}); set --image-root to the folder the "
                         "paths start from")
    train_labels = {label for split, _, label in entries if split == "train"}
    if not train_labels:
        raise UsageError(f"labels file {str(path)!r} has no rows of the train split")
    others = sorted({label for split, _, label in entries if split != "train"} - train_labels)
    if others:
        raise UsageError(f"labels file {str(path)!r}: labels in val or test rows that no train row has: "
                         f"{', '.join(others[:10])}")
    class_names = sort_classes(train_labels)
    index = {name: k for k, name in enumerate(class_names)}
    files: dict[str, list[tuple[ImageSource, int]]] = {"train": []}
    for split, file, label in entries:
        files.setdefault(split, []).append((file, index[label]))
    notes = []
    if repeated:
        notes.append(f"{repeated} row(s) of {str(path)!r} list a file already listed; the first row of each is used")
    if missing:
        notes.append(f"{len(missing)} file(s) listed in {str(path)!r} do not exist (listed in bad_files.txt)")
    return ImageFiles(path, class_names, {s: files[s] for s in ("train", "val", "test") if s in files}, notes)


def _columns(header: list[str], path: Path, path_column: str | None, label_column: str | None
             ) -> tuple[int, int, int | None]:
    """The positions of the path, label and (None: no such column) split columns in ``header``.

    Raises:
        UsageError: If a column is missing, or the path and the label are the same column.
    """
    named = {name.lower() for name in header} & {*PATH_COLUMNS, *LABEL_COLUMNS}
    if path_column is None and label_column is None and len(header) == 2 and not named:
        path_at, label_at = 0, 1
    else:
        path_at = _column(header, path_column, PATH_COLUMNS, "path", "--path-column", path)
        label_at = _column(header, label_column, LABEL_COLUMNS, "label", "--label-column", path)
    if path_at == label_at:
        raise UsageError(f"labels file {str(path)!r}: the path and the label are the same column ({header[path_at]!r})")
    lowered = [name.lower() for name in header]
    split_at = lowered.index(SPLIT_COLUMN) if SPLIT_COLUMN in lowered and lowered.index(SPLIT_COLUMN) not in (
        path_at, label_at) else None
    return path_at, label_at, split_at


def _entries(rows: list[list[str]], header: list[str], path: Path, root: Path,
             columns: tuple[int, int, int | None], *, paths_outside_root: bool
             ) -> tuple[list[tuple[str, Path, str]], int]:
    """Each row as ``(split, file, label)``, a file listed again left out, and how many were.

    Raises:
        UsageError: On a row without a path or label, an unknown split, or a path that leaves the image root
            (without ``paths_outside_root``).
    """
    path_at, label_at, split_at = columns
    entries: list[tuple[str, Path, str]] = []
    seen: set[Path] = set()
    repeated = 0
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        cells = [cell.strip() for cell in row]
        where = f"labels file {str(path)!r}, row {number}"
        if len(cells) <= max(path_at, label_at, split_at or 0):
            raise UsageError(f"{where} has {len(cells)} column(s); the header has {len(header)}")
        name, label = cells[path_at], cells[label_at]
        if not name or not label:
            raise UsageError(f"{where} has no {'path' if not name else 'label'} (column "
                             f"{header[path_at if not name else label_at]!r}); every row needs both")
        split = "train"
        if split_at is not None:
            split = SPLIT_VALUES.get(cells[split_at].lower(), "")
            if not split:
                raise UsageError(f"{where}: unknown split {cells[split_at]!r}; valid values: "
                                 f"{', '.join(SPLIT_VALUES)}")
        file = _locate(root, name)
        if not paths_outside_root and not _inside(file, root):
            raise UsageError(f"{where}: {name!r} leaves the image root {str(root)!r}; imgclf reads a labels file's "
                             "images inside its root only: move them there, set --image-root, or pass "
                             "--paths-outside-root to read them where they are")
        if file in seen:
            repeated += 1
            continue
        seen.add(file)
        entries.append((split, file, label))
    return entries, repeated
