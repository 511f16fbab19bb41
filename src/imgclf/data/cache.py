"""Decoded-image cache for image folders.

The first load of a folder decodes and resizes every image once and stores the
result as ``uint8`` ``.npy`` arrays (one per split, ``(N, C, H, W)``) with a JSON
manifest. The cache key is a hash of every file's path, label, size and
modification time plus the requested image size and channels, so any change
to a file (or to those settings) makes a new entry; an entry is never reused
for different inputs. Arrays are opened memory-mapped, so a split larger than
memory is read from disk on demand.

Location: ``$IMGCLF_CACHE_DIR``, else ``$XDG_CACHE_HOME/imgclf/decoded``
(``~/.cache/imgclf/decoded``). Entries are written to a temporary folder that
is renamed into place, so a crashed run never leaves a half-written entry.
Deleting the folder is always safe.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from imgclf.errors import UsageError

FORMAT = "imgclf-decoded/1"


def cache_root() -> Path:
    """The folder holding cache entries (created on first write)."""
    if os.environ.get("IMGCLF_CACHE_DIR"):
        return Path(os.environ["IMGCLF_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "imgclf" / "decoded"


class CacheEntry:
    """One decoded folder in the cache: ``manifest.json`` and ``<split>_{images,labels}.npy``."""

    def __init__(self, key: str, root: Path | None = None):
        self.key = key
        self.path = (root or cache_root()) / key

    def exists(self) -> bool:
        return (self.path / "manifest.json").is_file()

    def read(self) -> tuple[dict, dict[str, tuple[np.ndarray, np.ndarray]]]:
        """The manifest and ``{split: (images memmap (N, C, H, W) uint8, labels int64 (N,))}``."""
        manifest = json.loads((self.path / "manifest.json").read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT:
            raise ValueError(f"cache entry {self.path} has format {manifest.get('format')!r}")
        arrays = {
            split: (
                np.load(self.path / f"{split}_images.npy", mmap_mode="r"),
                np.load(self.path / f"{split}_labels.npy"),
            )
            for split in manifest["splits"]
        }
        return manifest, arrays

    def writer(self) -> CacheWriter:
        return CacheWriter(self)


class CacheWriter:
    """Builds an entry in a temporary folder; :meth:`commit` renames it into place."""

    def __init__(self, entry: CacheEntry):
        self.entry = entry
        entry.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=entry.path.parent, prefix=f".{entry.key}."))

    def images(self, split: str, shape: tuple[int, ...]) -> np.ndarray:
        """A writable ``uint8`` memmap of ``shape`` for ``split``'s images, its disk space reserved
        first: writing into a memory map past a full disk's end kills the process (SIGBUS).

        Raises:
            UsageError: If the cache's file system has no room for it, saying what to do.
        """
        path = self.tmp / f"{split}_images.npy"
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        except OSError as error:
            del array
            self.abort()
            megabytes = int(np.prod(shape)) / 2**20
            raise UsageError(f"the decoded-image cache in {str(self.entry.path.parent)!r} has no room for "
                             f"{megabytes:,.0f} MB ({error.strerror or error}); free space there, set "
                             "IMGCLF_CACHE_DIR to a larger disk, or load without the cache (--no-cache)") from None
        finally:
            os.close(fd)
        return array

    def replace_images(self, split: str, array: np.ndarray) -> None:
        np.save(self.tmp / f"{split}_images.npy", array)

    def labels(self, split: str, labels: np.ndarray) -> None:
        np.save(self.tmp / f"{split}_labels.npy", labels.astype(np.int64))

    def commit(self, manifest: dict) -> None:
        (self.tmp / "manifest.json").write_text(json.dumps({"format": FORMAT, **manifest}, indent=1), encoding="utf-8")
        try:
            os.rename(self.tmp, self.entry.path)
        except OSError:
            # Another process committed the same entry first; its content is identical.
            shutil.rmtree(self.tmp, ignore_errors=True)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
