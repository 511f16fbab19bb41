"""The run folder on disk: creating, opening, and atomic readers and writers.

What each file holds, its name and the sections of ``metrics.json`` are
defined in :mod:`imgclf.record`. Every write goes to a temporary file in the
same folder that is then renamed over the target, so a reader never sees a
half-written file and an interrupted run leaves the previous version intact.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import tempfile
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from imgclf import record
from imgclf.errors import UsageError, first_line


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Permissions of a file made by ``open()``; ``mkstemp`` would leave 0600.
FILE_MODE = 0o666 & ~_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and an atomic rename.

    The file gets the permissions ``open()`` would give it (0666 less the umask).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


class RunFolder:
    """Paths and atomic readers/writers for one run folder.

    Args:
        path: The folder.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # -- creation ---------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path | None, *, default_name: str) -> RunFolder:
        """Make a new, empty run folder; never reuse one that has files in it.

        Args:
            path: The folder to create, or None for ``runs/<default_name>-<time>``
                (a numeric suffix is added if that exists).
            default_name: Stem of the default folder name, e.g. ``"mnist-simple-cnn"``.

        Raises:
            UsageError: If ``path`` exists and is not an empty folder.
        """
        if path is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            base = Path("runs") / f"{default_name}-{stamp}"
            candidate, n = base, 1
            while candidate.exists():
                n += 1
                candidate = base.with_name(f"{base.name}-{n}")
            path = candidate
        path = Path(path)
        cls.check_available(path)
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    @staticmethod
    def check_available(path: str | Path) -> None:
        """Raise UsageError unless ``path`` is absent or an empty folder."""
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise UsageError(
                f"output folder {str(path)!r} already exists and is not empty; "
                "choose another --out (imgclf never overwrites a run)"
            )

    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        """Open an existing run folder.

        Raises:
            UsageError: If ``path`` is not a folder holding ``config.yaml``.
        """
        folder = cls(path)
        if not folder.path.is_dir():
            raise UsageError(f"run folder {str(path)!r} does not exist")
        if not folder.config_path.is_file() and folder.file(record.CLASSIFIER_CONFIG).is_file():
            raise UsageError(f"{str(path)!r} holds a classifier trained on features (imgclf fit-features or "
                             "mlp-numpy), not an image model; this command needs a run of imgclf run or train")
        if not folder.config_path.is_file():
            raise UsageError(f"{str(path)!r} is not a run folder: it has no config.yaml")
        return folder

    def remove_temporary_files(self) -> list[Path]:
        """Delete the temporary files of atomic writes (``.NAME.*.tmp``) that a killed process left
        behind; returns them. The files they were to replace are complete, old or new."""
        left = sorted(self.path.glob(".*.tmp")) + sorted(self.path.glob(f"{record.FIGURES}/.*.tmp"))
        for path in left:
            path.unlink(missing_ok=True)
        return left

    # -- paths ------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        """``RUN/config.yaml``."""
        return self.path / record.CONFIG

    @property
    def weights_path(self) -> Path:
        """``RUN/model.safetensors`` (its metadata is ``RUN/model.json``)."""
        return self.path / record.WEIGHTS

    @property
    def figures(self) -> Path:
        """``RUN/figures``."""
        return self.path / record.FIGURES

    def file(self, name: str) -> Path:
        """``RUN/name``."""
        return self.path / name

    # -- JSON / CSV / arrays ----------------------------------------------
    def write_json(self, name: str, data: Any) -> Path:
        """Write ``data`` as indented JSON to ``RUN/name``, atomically."""
        path = self.file(name)
        atomic_write_text(path, json.dumps(data, indent=2, allow_nan=True) + "\n")
        return path

    def read_json(self, name: str, default: Any = None) -> Any:
        """The JSON in ``RUN/name``, or ``default`` if there is no such file.

        Raises:
            UsageError: If the file is not UTF-8 JSON, naming it.
        """
        path = self.file(name)
        if not path.exists() and not path.is_symlink():
            return default
        return record.load_json(path, "restore it, or delete it and run the stage that wrote it again")

    def update_metrics(self, updates: dict[str, Any]) -> dict[str, Any]:
        """Merge ``updates`` into ``metrics.json`` (dict values merge one level deep)."""
        metrics = self.read_json(record.METRICS, default={})
        for key, value in updates.items():
            if isinstance(value, dict) and isinstance(metrics.get(key), dict):
                metrics[key] = {**metrics[key], **value}
            else:
                metrics[key] = value
        self.write_json(record.METRICS, metrics)
        return metrics

    def write_csv(self, name: str, rows: list[dict[str, Any]]) -> Path:
        """Write ``rows`` (dicts with the same keys) as CSV with a header, atomically."""
        buffer = io.StringIO()
        if rows:
            writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        path = self.file(name)
        atomic_write_text(path, buffer.getvalue())
        return path

    def read_csv(self, name: str) -> list[dict[str, float]]:
        """The rows of a numeric CSV written by :meth:`write_csv` ([] if absent).

        Raises:
            UsageError: If the file is not UTF-8, a row is short or long, or a value is not a number.
        """
        path = self.file(name)
        if not path.is_file():
            return []
        try:
            with path.open(newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                rows = []
                for line, row in enumerate(reader, start=2):
                    if None in row or None in row.values():
                        raise ValueError(f"line {line} has {len(row) - (None in row)} values for "
                                         f"{len(reader.fieldnames or ())} columns")
                    rows.append({key: float(value) for key, value in row.items()})
                return rows
        except (UnicodeDecodeError, ValueError, csv.Error) as error:
            raise UsageError(f"{str(path)!r} is not a table of numbers ({error}); restore it, or delete it and "
                             "run the stage that wrote it again") from None

    def write_arrays(self, name: str, **arrays: np.ndarray) -> Path:
        """Write NumPy arrays to a compressed ``.npz``, atomically."""
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]  # the stub fears a key "allow_pickle"
        path = self.file(name)
        atomic_write_bytes(path, buffer.getvalue())
        return path

    def read_arrays(self, name: str) -> dict[str, np.ndarray] | None:
        """The arrays of ``RUN/name`` (``.npz``, never unpickled), or None if absent.

        Raises:
            UsageError: If the file is not an ``.npz`` archive, is truncated, or holds Python objects.
        """
        path = self.file(name)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as archive:
                if not isinstance(archive, np.lib.npyio.NpzFile):
                    raise ValueError("it is a single array, not an archive of named arrays")
                return {key: archive[key] for key in archive.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as error:
            why = "it is damaged, or holds pickled Python objects, which imgclf never loads" \
                if "pickle" in str(error) else first_line(error)
            raise UsageError(f"{str(path)!r} cannot be read as NumPy arrays ({why}); restore it, or delete it and "
                             "run the stage that wrote it again") from None

    def append_log(self, line: str) -> None:
        """Append one line to ``log.txt`` (a log, so appending is the right write)."""
        with self.file(record.LOG).open("a", encoding="utf-8") as handle:
            handle.write(line.rstrip("\n") + "\n")


class RunLog:
    """Prints progress lines (unless quiet) and keeps every line in ``log.txt``."""

    def __init__(self, folder: RunFolder | None = None, *, quiet: bool = False):
        self.folder, self.quiet = folder, quiet
        self._pending: list[str] = []

    def attach(self, folder: RunFolder) -> None:
        """Start writing to ``folder``'s log, including lines logged before it existed."""
        self.folder = folder
        for line in self._pending:
            folder.append_log(line)
        self._pending.clear()

    def __call__(self, line: str) -> None:
        if not self.quiet:
            print(line, flush=True)
        self._keep(line)

    def warn(self, line: str) -> None:
        """A line that must reach the user whatever the verbosity (a failed sanity check): on stderr."""
        print(line, file=sys.stderr, flush=True)
        self._keep(line)

    def _keep(self, line: str) -> None:
        if self.folder is None:
            self._pending.append(line)
        else:
            self.folder.append_log(line)
