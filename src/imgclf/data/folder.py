"""Image-folder data sets: ``PATH/train/<class>/*``, ``PATH/test/<class>/*``
(optional ``PATH/val/<class>/*``), or ``PATH/<class>/*`` alone.

Images are decoded with Pillow, turned upright by their EXIF orientation,
converted to grey (``L``) or ``RGB`` (transparency flattened onto white), and
resized to ``image_size x image_size``. Hidden files and folders, ``__MACOSX``
and files whose extension is not an image format are ignored; files that fail
to decode are skipped and reported, never silently dropped.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imgclf.data.builtin import Pools
from imgclf.errors import UsageError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
SPLIT_NAMES = ("train", "val", "test")


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and path.name != "__MACOSX"


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p))


def _image_files(class_dir: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = sorted(d for d in dirnames if _visible(Path(d)))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if _visible(path) and path.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(path)
    return files


def looks_like_folder(dataset: str) -> bool:
    """True when ``dataset`` names a path rather than a registered data set."""
    return os.sep in dataset or "/" in dataset or dataset.startswith((".", "~")) or Path(dataset).is_dir()


def scan_folder(root: Path) -> tuple[list[str], dict[str, list[tuple[Path, int]]], list[str]]:
    """Find classes and files without decoding anything.

    Returns:
        ``(class_names, files, notes)``: class names (sorted folder names of
        the training split), ``{split: [(path, label), ...]}`` with ``train``
        always present, and warnings about the layout.

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
    class_names = [p.name for p in _class_dirs(split_dirs["train"])]
    files: dict[str, list[tuple[Path, int]]] = {}
    for split, folder in split_dirs.items():
        present = [p.name for p in _class_dirs(folder)]
        extra = sorted(set(present) - set(class_names))
        if extra:
            raise UsageError(
                f"the {split} split of {str(root)!r} has classes that train does not: {', '.join(extra)}"
            )
        absent = sorted(set(class_names) - set(present))
        if absent and split != "train":
            notes.append(f"the {split} split has no images of: {', '.join(absent)}")
        files[split] = [
            (path, class_names.index(name)) for name in present for path in _image_files(folder / name)
        ]
    if not files["train"]:
        raise UsageError(
            f"no images found in {str(split_dirs['train'])!r}: expected one sub-folder per class "
            f"holding image files ({', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    used = sorted({label for _, label in files["train"]})
    if len(used) < 2:
        only = class_names[used[0]] if used else "none"
        raise UsageError(
            f"image folder {str(root)!r} has images of only one class ({only}); a classifier needs at least 2"
        )
    for split in [s for s in files if s != "train" and not files[s]]:
        raise UsageError(f"the {split} split of {str(root)!r} holds no images")
    return class_names, files, notes


def decode_image(path: Path, *, channels: int, size: tuple[int, int]) -> np.ndarray:
    """Decode one image file into ``uint8`` ``(C, H, W)``.

    Args:
        path: The file.
        channels: 1 (grey, Pillow mode ``L``) or 3 (``RGB``).
        size: ``(H, W)`` to resize to (bilinear, antialiased).

    Raises:
        OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError:
            If Pillow cannot decode the file.
    """
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
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


def _probe(path: Path) -> tuple[tuple[int, int], str] | None:
    try:
        with Image.open(path) as image:
            return (image.height, image.width), image.mode
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError):
        return None


def load_folder(
    root: Path, *, image_size: int | None, channels: int | None
) -> tuple[Pools, list[tuple[str, str]], list[str]]:
    """Decode an image folder into pools.

    Args:
        root: The folder (see the module docstring for layouts).
        image_size: Square size to resize to; None: the most common size in
            the training split.
        channels: 1 or 3; None: 1 if every training image is grey, else 3.

    Returns:
        ``(pools, bad_files, notes)``: the decoded pools, ``(path, reason)``
        for each file that could not be decoded, and layout warnings.

    Raises:
        UsageError: See :func:`scan_folder`; also when no file of a split decodes.
    """
    class_names, files, notes = scan_folder(root)
    workers = max(1, min(8, os.cpu_count() or 1))
    if image_size is None or channels is None:
        sample = [path for path, _ in files["train"][:: max(1, len(files["train"]) // 500)]]
        with ThreadPoolExecutor(workers) as pool:
            probes = [p for p in pool.map(_probe, sample) if p is not None]
        if not probes:
            raise UsageError(f"none of the sampled images in {str(root)!r} could be read")
        if image_size is None:
            (h, w), count = Counter(size for size, _ in probes).most_common(1)[0]
            size = (h, w)
            if count < len(probes):
                notes.append(f"images have several sizes; all resized to {w}x{h} (set --image-size to choose)")
        if channels is None:
            channels = 1 if all(mode in ("1", "L", "I", "I;16", "F") for _, mode in probes) else 3
    if image_size is not None:
        size = (image_size, image_size)

    bad: list[tuple[str, str]] = []

    def decode(path: Path) -> np.ndarray | None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                return decode_image(path, channels=channels, size=size)
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError,
                Image.DecompressionBombWarning, ValueError, SyntaxError) as error:
            bad.append((str(path), f"{type(error).__name__}: {error}"))
            return None

    pools: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, entries in files.items():
        with ThreadPoolExecutor(workers) as pool:
            decoded = list(pool.map(decode, [path for path, _ in entries]))
        keep = [i for i, array in enumerate(decoded) if array is not None]
        if not keep:
            raise UsageError(f"no image in the {split} split of {str(root)!r} could be decoded")
        images = np.stack([decoded[i] for i in keep])  # (N, C, H, W)
        labels = np.asarray([entries[i][1] for i in keep], dtype=np.int64)
        pools[split] = (images, labels)
    if bad:
        notes.append(f"skipped {len(bad)} file(s) that could not be decoded (listed in bad_files.txt)")
    return Pools(class_names, pools), sorted(bad), notes
