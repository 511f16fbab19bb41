"""A deliberately messy image folder, as users bring them (used by tests and benchmarks)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

#: (mode, file format) pairs Pillow can write; together they cover every common mode.
MODES = [
    ("1", "PNG"), ("L", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("RGB", "PNG"), ("RGBA", "PNG"),
    ("I;16", "PNG"), ("I", "TIFF"), ("F", "TIFF"), ("CMYK", "JPEG"), ("L", "JPEG"), ("RGB", "JPEG"),
    ("YCbCr", "JPEG"), ("P", "GIF"), ("L", "GIF"), ("RGB", "BMP"), ("P", "BMP"), ("1", "BMP"),
    ("RGB", "WEBP"), ("RGBA", "WEBP"),
]
SUFFIX = {"PNG": ".png", "TIFF": ".tif", "JPEG": ".jpg", "GIF": ".gif", "BMP": ".bmp", "WEBP": ".webp"}


def _picture(k: int, rng: np.random.Generator, size=(24, 20)) -> Image.Image:
    """An RGB picture whose dominant colour channel is the class ``k``."""
    array = rng.integers(0, 70, size=(size[1], size[0], 3), dtype=np.uint8)
    array[..., k % 3] += 170
    return Image.fromarray(array, "RGB")


def _convert(image: Image.Image, mode: str) -> Image.Image:
    if mode == "I;16":
        grey = np.asarray(image.convert("L"), dtype=np.uint16) * 257
        return Image.fromarray(grey)  # uint16 -> mode I;16
    if mode == "F":
        return Image.fromarray(np.asarray(image.convert("L"), dtype=np.float32) / 255.0)  # -> mode F
    return image.convert(mode)


def make_messy_folder(root: Path, *, per_class: int = 2, seed: int = 0) -> dict:
    """Write ``root/{train,test}/{red,green,blue}/`` with every mode and format above.

    Returns:
        ``{"good": number of decodable images, "bad": names of broken files,
        "rotated": path of the EXIF-rotated photo}``.
    """
    rng = np.random.default_rng(seed)
    good, bad = 0, []
    for split in ("train", "test"):
        for k, name in enumerate(["red", "green", "blue"]):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i, (mode, fmt) in enumerate(MODES * per_class):
                image = _convert(_picture(k, rng), mode)
                image.save(folder / f"{i:02d}-{mode.replace(';', '')}{SUFFIX[fmt]}", format=fmt)
                good += 1
            (folder / "README.txt").write_text("not an image")
            hidden = folder / ".thumbnails"
            hidden.mkdir()
            _picture(k, rng).save(hidden / "thumb.png")
    train = root / "train" / "red"
    # An EXIF-rotated photo: stored 30 wide x 10 high, red left half; orientation 6 = rotate 90 deg clockwise.
    stored = np.zeros((10, 30, 3), dtype=np.uint8)
    stored[:, :15, 0] = 255
    stored[:, 15:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(train / "rotated.jpg", exif=exif.tobytes(), quality=95)
    good += 1
    (train / "zero.png").write_bytes(b"")
    buffer = io.BytesIO()
    _picture(0, rng, size=(64, 64)).save(buffer, format="JPEG")
    (train / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    (train / "fake.jpg").write_text("this is text, not a JPEG")
    bad += ["fake.jpg", "truncated.jpg", "zero.png"]
    (root / ".ipynb_checkpoints").mkdir()
    (root / "__MACOSX" / "train" / "red").mkdir(parents=True)
    (root / "__MACOSX" / "train" / "red" / "._x.png").write_bytes(b"\x00resource fork")
    (root / "train" / ".DS_Store").write_bytes(b"\x00\x00")
    return {"good": good, "bad": bad, "rotated": train / "rotated.jpg"}
