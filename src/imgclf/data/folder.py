"""Image-folder data sets: ``PATH/train/<class>/*``, ``PATH/test/<class>/*``
(optional ``PATH/val/<class>/*``), or ``PATH/<class>/*`` alone; and the decoding of
any listing of images (a folder, a labels file: :mod:`imgclf.data.labels_file`, or
images stored inside a data set's files: :mod:`imgclf.data.hugging_face`).

Images are decoded with Pillow, turned upright by their EXIF orientation,
converted to grey (``L``) or ``RGB`` from any mode (16-bit grey is rescaled,
transparency is flattened onto white), and resized to ``image_size x
image_size``. Hidden files and folders, ``__MACOSX`` and files whose extension
is not an image format are ignored. Files that cannot be decoded (corrupt,
truncated, empty, decompression bombs) are skipped and listed with their
reason, or stop the load when ``bad_files="error"``; none is silently dropped.
The decoded arrays are cached (see :mod:`imgclf.data.cache`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import stat
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imgclf.data.builtin import Pools
from imgclf.data.cache import FORMAT, CacheEntry, CacheWriter
from imgclf.errors import UsageError
from imgclf.runtime import progress

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
SPLIT_NAMES = ("train", "val", "test")
BAD_FILE_POLICIES = ("skip", "error")
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
#: What decoding a broken file can raise, across Pillow's plugins.
DECODE_ERRORS = (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError, SyntaxError,
                 EOFError)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and path.name != "__MACOSX"


def _class_dirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p))
    except OSError as error:
        raise UsageError(f"image folder {str(folder)!r} cannot be read: {error.strerror or error}") from None


def _inside_data(folder: Path, root: Path) -> bool:
    """Whether ``folder`` is part of the data set at ``root``: a real folder, or a link that resolves inside
    ``root`` (a link elsewhere is not followed)."""
    return not folder.is_symlink() or folder.resolve().is_relative_to(root.resolve())


def list_image_files(folder: Path, unreadable: list[str] | None = None) -> list[Path]:
    """Image files under ``folder``, recursively and sorted; hidden files and folders,
    ``__MACOSX`` and files without an image extension are skipped. Links to folders are not
    followed (no loops); links to files are listed, and a broken one fails to decode like any
    bad file.

    Args:
        unreadable: Receives ``"FOLDER: reason"`` for each folder that cannot be listed (where
            None, such a folder raises).

    Raises:
        UsageError: If a folder cannot be listed and ``unreadable`` is None.
    """
    def refused(error: OSError) -> None:
        if unreadable is None:
            raise UsageError(f"folder {str(error.filename)!r} cannot be read: {error.strerror or error}")
        unreadable.append(f"{error.filename}: {error.strerror or error}")

    files = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=refused):
        dirnames[:] = sorted(d for d in dirnames if _visible(Path(d)))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if _visible(path) and path.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(path)
    return files


@dataclass(frozen=True, eq=False)
class StoredImage:
    """An encoded image stored inside a data set's own files (a row of a Hugging Face data set) rather than as
    a file of its own.

    Attributes:
        name: How messages and ``bad_files.txt`` name it (``DATASET[split][row]``).
        state: Changes when the files holding it change (keys the decoded-image cache).
        read: Returns the encoded bytes; raises OSError when there are none.
    """

    name: str
    state: str
    read: Callable[[], bytes]

    def __str__(self) -> str:
        return self.name


#: Where an image comes from: a file, or a data set's stored row.
ImageSource = Path | StoredImage


def require_regular_file(path: Path) -> None:
    """Refuse anything but a regular file (after links): reading a FIFO blocks until a writer comes, a device
    such as ``/dev/zero`` never ends, a socket cannot be read at all.

    Raises:
        OSError: Saying what the path is instead (``not a regular file (a FIFO)``), or that it does not exist.
    """
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a socket"
                if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file")
        raise OSError(errno.EINVAL, f"not a regular file ({kind})", str(path))


def read_image_bytes(source: ImageSource) -> bytes:
    """The encoded bytes of an image file or stored image.

    Raises:
        OSError: The file cannot be read or is not a regular file, or the stored row has no image.
    """
    if isinstance(source, Path):
        require_regular_file(source)
        return source.read_bytes()
    return source.read()


def open_image(source: ImageSource) -> Image.Image:
    """Pillow's lazy image of a file or stored image (use as a context manager).

    Raises:
        OSError, UnidentifiedImageError: As :func:`PIL.Image.open`, OSError for a path that is not a regular
            file, and OSError when a stored row has no image.
    """
    if isinstance(source, Path):
        require_regular_file(source)
        return Image.open(source)
    return Image.open(io.BytesIO(source.read()))


@dataclass
class ImageFiles:
    """A data set's image files and labels, listed but not decoded. On construction it notes each evaluation
    split that lacks some class, and refuses training images of fewer than two classes or an empty split
    (UsageError).

    Attributes:
        source: The folder, labels file or data set they were listed from (named in messages).
        class_names: Class names; a label is an index into them.
        files: ``{split: [(file or stored image, label), ...]}``, ``train`` always present, ``val`` and
            ``test`` where the data set has them.
        notes: Warnings about the layout.
    """

    source: Path
    class_names: list[str]
    files: dict[str, list[tuple[ImageSource, int]]]
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for split in [s for s in self.files if s != "train"]:
            found = {label for _, label in self.files[split]}
            absent = [name for k, name in enumerate(self.class_names) if k not in found]
            if absent:
                self.notes.append(f"the {split} split has no images of: {', '.join(absent)}")
        used = sorted({label for _, label in self.files["train"]})
        if len(used) < 2:
            only = self.class_names[used[0]] if used else "none"
            raise UsageError(f"{str(self.source)!r} has training images of only one class ({only}); a classifier "
                             "needs at least 2")
        for split in [s for s in self.files if s != "train" and not self.files[s]]:
            raise UsageError(f"the {split} split of {str(self.source)!r} holds no images")


def scan_folder(root: Path) -> ImageFiles:
    """Find classes and files without decoding anything.

    Returns:
        The listing: class names are the sorted folder names of the training split.

    Raises:
        UsageError: If the folder is missing or empty, has fewer than two
            classes, or an evaluation split has a class that train lacks.
    """
    if not root.is_dir():
        raise UsageError(f"image folder {str(root)!r} does not exist")
    split_dirs = {name: root / name for name in SPLIT_NAMES if (root / name).is_dir()}
    if split_dirs and "train" not in split_dirs:
        raise UsageError(f"image folder {str(root)!r} has {', '.join(split_dirs)} but no train/ folder")
    if not split_dirs:
        split_dirs = {"train": root}
    notes: list[str] = []
    outside = [str(p) for folder in split_dirs.values() for p in [folder, *_class_dirs(folder)]
               if not _inside_data(p, root)]
    if outside:  # (a class folder linking to / would walk the whole file system)
        notes.append(f"{len(outside)} folder(s) link outside {str(root)!r} and are not followed: "
                     f"{', '.join(outside[:3])}")
        split_dirs = {name: folder for name, folder in split_dirs.items() if _inside_data(folder, root)}
        if "train" not in split_dirs:
            raise UsageError(f"the train folder of {str(root)!r} links outside it; imgclf reads images inside the "
                             "data set only: copy or move them there")
    class_names = [p.name for p in _class_dirs(split_dirs["train"]) if _inside_data(p, root)]
    files: dict[str, list[tuple[ImageSource, int]]] = {}
    for split, folder in split_dirs.items():
        present = [p.name for p in _class_dirs(folder) if _inside_data(p, root)]
        extra = sorted(set(present) - set(class_names))
        if extra:
            raise UsageError(
                f"the {split} split of {str(root)!r} has classes that train does not: {', '.join(extra)}"
            )
        unreadable: list[str] = []
        files[split] = [
            (path, class_names.index(name)) for name in present
            for path in list_image_files(folder / name, unreadable)
        ]
        if unreadable:
            notes.append(f"{len(unreadable)} folder(s) of the {split} split cannot be read and their images are "
                         f"left out: {'; '.join(unreadable)}")
    if not files["train"]:
        raise UsageError(
            f"no images found in {str(split_dirs['train'])!r}: expected one sub-folder per class "
            f"holding image files ({', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    trained = sorted({label for _, label in files["train"]})
    if len(trained) < len(class_names):  # a class folder without training images is no class to learn
        empty = [name for k, name in enumerate(class_names) if k not in trained]
        notes.append(f"{len(empty)} class folder(s) of the train split hold no image and are left out: "
                     f"{', '.join(empty[:5])}")
        new_label = {old: new for new, old in enumerate(trained)}
        class_names = [class_names[k] for k in trained]
        files = {split: [(path, new_label[label]) for path, label in listed if label in new_label]
                 for split, listed in files.items()}
    return ImageFiles(root, class_names, files, notes)


def folder_key(
    files: dict[str, list[tuple[ImageSource, int]]],
    class_names: list[str],
    *,
    image_size: int | None,
    channels: int | None,
) -> str:
    """A hex digest identifying the decoded result of these files and settings."""
    digest = hashlib.sha256()
    digest.update(f"{FORMAT}\n{image_size}\n{channels}\n{json.dumps(class_names)}\n".encode())
    for split in sorted(files):
        for path, label in files[split]:
            if not isinstance(path, Path):  # an image stored in a data set's files
                digest.update(f"{split}\0{path}\0{label}\0{path.state}\n".encode())
                continue
            try:
                stat = path.stat()
                state = f"{stat.st_size}\0{stat.st_mtime_ns}"
            except OSError as error:  # a dangling or looping link: decoding skips it and lists why
                state = f"unreadable {error.errno}"
            digest.update(f"{split}\0{path.absolute()}\0{label}\0{state}\n".encode())
    return digest.hexdigest()[:32]


def _to_8bit_grey(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float grey images -> 8-bit ``L`` by their value range."""
    array = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        top = 1.0 if array.size and array.max() <= 1.0 else 255.0
    else:
        top = 65535.0 if image.mode.startswith("I;16") or (array.size and array.max() > 255) else 255.0
    return Image.fromarray(np.clip(np.rint(array * (255.0 / top)), 0, 255).astype(np.uint8))  # -> mode L


def refuse_bombs(image: Image.Image) -> None:
    """Raise before decoding an image of more than ``Image.MAX_IMAGE_PIXELS`` pixels.

    Pillow itself only warns between one and two times that limit.

    Raises:
        Image.DecompressionBombError: Naming the size and the limit.
    """
    if Image.MAX_IMAGE_PIXELS and image.width * image.height > Image.MAX_IMAGE_PIXELS:
        raise Image.DecompressionBombError(
            f"{image.width}x{image.height} pixels exceeds the limit of {Image.MAX_IMAGE_PIXELS} "
            "(a possible decompression bomb)"
        )


def decode_image(path: ImageSource, *, channels: int, size: tuple[int, int]) -> np.ndarray:
    """Decode one image file (or stored image) into ``uint8`` ``(C, H, W)``.

    Args:
        path: The file or stored image.
        channels: 1 (grey, Pillow mode ``L``) or 3 (``RGB``).
        size: ``(H, W)`` to resize to (bilinear, antialiased).

    Raises:
        OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError,
        SyntaxError, EOFError: If Pillow cannot decode the file; a file with
            more than ``Image.MAX_IMAGE_PIXELS`` pixels is refused as a
            decompression bomb before it is decoded.
    """
    with open_image(path) as opened:
        refuse_bombs(opened)
        image: Image.Image = ImageOps.exif_transpose(opened)
        if image.mode in ("I", "F") or image.mode.startswith("I;16"):
            image = _to_8bit_grey(image)
        if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
            image.mode == "P" and "transparency" in image.info
        ):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, rgba)
        image = image.convert("L" if channels == 1 else "RGB")
        if image.size != (size[1], size[0]):
            image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
    if channels == 1:
        return array[None, :, :]  # (H, W) -> (1, H, W)
    return array.transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def probe_image(path: ImageSource) -> tuple[tuple[int, int], str] | None:
    """``((H, W), mode)`` from the file's header, or None if it cannot be opened."""
    try:
        with open_image(path) as image:
            return (image.height, image.width), image.mode
    except DECODE_ERRORS:
        return None


@contextlib.contextmanager
def decoding_pool() -> Iterator[ThreadPoolExecutor]:
    """A thread pool for Pillow work, with Pillow's decompression-bomb warning silenced:
    :func:`decode_image` refuses oversized images itself and reports them as bad files."""
    with warnings.catch_warnings(), ThreadPoolExecutor(decode_workers()) as pool:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield pool


def decode_workers() -> int:
    """Threads for decoding (Pillow releases the GIL while it decodes): the cores, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def _resolve_shape(
    train: list[tuple[ImageSource, int]], image_size: int | None, channels: int | None, notes: list[str], root: Path
) -> tuple[tuple[int, int], int]:
    """Image size and channels: as asked, else from a sample of training-file headers."""
    if image_size is not None and channels is not None:
        return (image_size, image_size), channels
    sample = [path for path, _ in train[:: max(1, len(train) // 500)]]
    with decoding_pool() as pool:
        probes = [p for p in pool.map(probe_image, sample) if p is not None]
    if not probes:
        raise UsageError(f"none of the sampled images in {str(root)!r} could be read")
    if image_size is None:
        (h, w), count = Counter(size for size, _ in probes).most_common(1)[0]
        size = (h, w)
        if count < len(probes):
            notes.append(f"images have several sizes; all resized to {w}x{h} (set --image-size to choose)")
    else:
        size = (image_size, image_size)
    if channels is None:
        channels = 1 if all(mode in GREY_MODES for _, mode in probes) else 3
    return size, channels


def _bad_file_error(path: str, reason: str) -> UsageError:
    return UsageError(f"cannot decode {path!r} ({reason}); use --bad-files skip to skip such files")


def _decode_split(split: str, entries: list[tuple[ImageSource, int]], root: Path, *, channels: int,
                  size: tuple[int, int], writer: CacheWriter | None, bad_files: str, bad: list[tuple[str, str]]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Decode one split's files in parallel into ``uint8`` ``(N, C, H, W)`` images (in the cache ``writer``'s
    file where there is one) and their ``int64`` ``(N,)`` labels; files that do not decode are added to ``bad``
    and left out.

    Raises:
        UsageError: A bad file under ``bad_files="error"``; a split in which no file decodes.
    """
    shape = (len(entries), channels, *size)
    images = writer.images(split, shape) if writer else np.empty(shape, dtype=np.uint8)
    ok = np.zeros(len(entries), dtype=bool)

    def decode(i: int) -> None:
        path = entries[i][0]
        try:
            images[i] = decode_image(path, channels=channels, size=size)
            ok[i] = True
        except DECODE_ERRORS as error:
            reason = f"{type(error).__name__}: {error}"
            if bad_files == "error":
                raise _bad_file_error(str(path), reason) from None
            bad.append((str(path), reason))

    with decoding_pool() as pool, progress(total=len(entries), desc=f"decoding the {split} images", unit="image",
                                           leave=False) as bar:
        for _ in pool.map(decode, range(len(entries))):
            bar.update(1)
    if not ok.any():
        raise UsageError(f"no image in the {split} split of {str(root)!r} could be decoded")
    labels = np.asarray([label for _, label in entries], dtype=np.int64)[ok]
    if not ok.all():
        images = np.ascontiguousarray(images[ok])
        if writer:
            writer.replace_images(split, images)
    if writer:
        writer.labels(split, labels)
    return images, labels


def load_image_files(
    listing: ImageFiles,
    *,
    image_size: int | None,
    channels: int | None,
    bad_files: str = "skip",
    cache: bool = True,
) -> tuple[Pools, list[tuple[str, str]], list[str]]:
    """Decode listed image files into pools, or read them from the decoded-image cache.

    Args:
        listing: The files (:func:`scan_folder`, :func:`imgclf.data.labels_file.scan_labels_file`).
        image_size: Square size to resize to; None: the most common size in
            the training split.
        channels: 1 or 3; None: 1 if every sampled training image is grey, else 3.
        bad_files: ``"skip"`` files that cannot be decoded (and list them), or
            ``"error"`` at the first one.
        cache: Read and write the decoded-image cache. With the cache the
            pools are read-only memory-mapped arrays.

    Returns:
        ``(pools, bad_files, notes)``: pools with ``uint8`` ``(N, C, H, W)``
        images, ``(path, reason)`` for each skipped file, and warnings.

    Raises:
        UsageError: A bad file under ``"error"``; a split in which no file decodes.
    """
    if bad_files not in BAD_FILE_POLICIES:
        raise UsageError(f"unknown bad-files policy {bad_files!r}; valid choices: {', '.join(BAD_FILE_POLICIES)}")
    root, class_names, files, notes = listing.source, listing.class_names, listing.files, list(listing.notes)
    entry = CacheEntry(folder_key(files, class_names, image_size=image_size, channels=channels)) if cache else None
    if entry is not None and entry.exists():
        manifest, arrays = entry.read()
        cached_bad = [(str(path), str(reason)) for path, reason in manifest["bad_files"]]
        if cached_bad and bad_files == "error":
            raise _bad_file_error(*cached_bad[0])
        return Pools(manifest["class_names"], arrays), cached_bad, notes + manifest["notes"]

    scanned = len(notes)  # notes from here on depend on the decoded content and are cached with it
    size, channels = _resolve_shape(files["train"], image_size, channels, notes, root)
    writer = entry.writer() if entry is not None else None
    bad: list[tuple[str, str]] = []
    pools: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    try:
        for split, entries in files.items():
            pools[split] = _decode_split(split, entries, root, channels=channels, size=size, writer=writer,
                                         bad_files=bad_files, bad=bad)
        bad.sort()
        if bad:
            notes.append(f"skipped {len(bad)} file(s) that could not be decoded (listed in bad_files.txt)")
        if writer is not None and entry is not None:
            del pools  # drop the writable maps before the files move
            writer.commit({"class_names": class_names, "splits": list(files), "bad_files": bad,
                           "notes": notes[scanned:], "image_size": list(size), "channels": channels,
                           "root": str(root.resolve())})
            manifest, arrays = entry.read()
            return Pools(class_names, arrays), bad, notes
    except BaseException:
        if writer:
            writer.abort()
        raise
    return Pools(class_names, pools), bad, notes
