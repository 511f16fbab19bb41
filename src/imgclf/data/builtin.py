"""Built-in data sets: scikit-learn's digits and torchvision's classic sets.

Each entry is registered with :func:`register_dataset` and returns its pools
(``train``, ``test``) as ``uint8`` arrays of shape ``(N, C, H, W)``. torchvision's
own classes read (and, where files are missing, download) the files, in their
own layout under the data folder: ``MNIST/raw``, ``FashionMNIST/raw``,
``KMNIST/raw``, ``cifar-10-batches-py``, ``cifar-100-python``, and SVHN's
``train_32x32.mat`` / ``test_32x32.mat`` at the top of the data folder.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import numpy as np

from imgclf.errors import DataNotFoundError, first_line


def resolve_data_dir(data_dir: str | None) -> Path:
    """``data_dir``, else ``$IMGCLF_DATA_DIR``, else ``$XDG_CACHE_HOME/imgclf/data``
    (``~/.cache/imgclf/data``)."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get("IMGCLF_DATA_DIR"):
        return Path(os.environ["IMGCLF_DATA_DIR"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "imgclf" / "data"


@dataclass
class Pools:
    """Raw examples of a data set, before imgclf splits them.

    Attributes:
        class_names: Name of each class, index = label.
        pools: ``{"train": (images, labels), "test": (...), "val": (...)}``;
            images ``uint8`` ``(N, C, H, W)``, labels ``int64`` ``(N,)``. Only
            ``train`` is required; missing splits are carved out of it.
    """

    class_names: list[str]
    pools: dict[str, tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class BuiltinDataset:
    """A registry entry: facts for `imgclf datasets` plus the loader."""

    name: str
    summary: str
    channels: int
    image_size: int
    num_classes: int
    splits: str  # e.g. "60,000 train / 10,000 test"
    files: Callable[[Path], list[Path]]  # files that must exist under the data folder
    source: str  # where the files come from, for the by-hand message
    load: Callable[[Path, bool], Pools]


DATASETS: dict[str, BuiltinDataset] = {}


def register_dataset(
    name: str,
    *,
    summary: str,
    channels: int,
    image_size: int,
    num_classes: int,
    splits: str,
    files: Callable[[Path], list[Path]],
    source: str,
) -> Callable[[Callable[[Path, bool], Pools]], Callable[[Path, bool], Pools]]:
    """Decorator registering a loader ``load(root, download) -> Pools`` under ``name``."""

    def decorate(load: Callable[[Path, bool], Pools]) -> Callable[[Path, bool], Pools]:
        if name in DATASETS:
            raise ValueError(f"data set {name!r} is registered twice")
        DATASETS[name] = BuiltinDataset(
            name, summary, channels, image_size, num_classes, splits, files, source, load
        )
        return load

    return decorate


def missing_files(entry: BuiltinDataset, root: Path) -> list[Path]:
    """The files of ``entry`` that are not under ``root``."""
    return [path for path in entry.files(root) if not path.is_file()]


def fetch(entry: BuiltinDataset, root: Path, download: bool) -> Pools:
    """Load a built-in data set, downloading only the files that are missing.

    Raises:
        DataNotFoundError: If files are missing and downloading is off or
            fails; the message lists the files, where they were looked for, and
            how to place them by hand.
    """
    missing = missing_files(entry, root)
    if missing and download:
        try:
            # torchvision prints download progress; keep it out of the user's output.
            with contextlib.redirect_stdout(io.StringIO()):
                return entry.load(root, True)
        except (URLError, OSError, RuntimeError) as error:
            reason = f"downloading them failed ({first_line(error)})"
    elif missing:
        reason = "downloading is turned off (data.download: false)"
    else:
        try:
            return entry.load(root, False)
        except (RuntimeError, ValueError, OSError, EOFError, KeyError, IndexError) as error:  # torchvision's
            raise DataNotFoundError(  # readers fail in many ways on a truncated or damaged file
                f"the {entry.name} files under {str(root)!r} are present but cannot be read ({first_line(error)}); "
                f"they are damaged or truncated: delete them to download them again, or place good copies "
                f"({entry.source})") from None
    folder = missing[0].parent
    names = ", ".join(path.name for path in missing)
    raise DataNotFoundError(
        f"data set {entry.name!r} is missing files in {folder}: {names}; {reason}. "
        f"Place them there by hand (from {entry.source}), or point --data-dir or "
        "IMGCLF_DATA_DIR at a folder that holds them"
    )


def _to_nchw(images: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` or ``(N, H, W, C)`` uint8 -> contiguous ``(N, C, H, W)``."""
    if images.ndim == 3:
        return np.ascontiguousarray(images[:, None, :, :])  # (N, H, W) -> (N, 1, H, W)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))  # (N, H, W, C) -> (N, C, H, W)


#: The four uncompressed IDX files torchvision's MNIST-style classes read from ``ROOT/<class>/raw``
#: (declared here so that ``imgclf datasets`` needs no torchvision; a test compares them with its own).
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx_files(class_name: str) -> Callable[[Path], list[Path]]:
    """The IDX files of torchvision's ``class_name`` (``MNIST``, ``FashionMNIST``, ``KMNIST``)."""

    def files(root: Path) -> list[Path]:
        return [root / class_name / "raw" / name for name in IDX_FILES]

    return files


def _load_idx(class_name: str, short_names: bool) -> Callable[[Path, bool], Pools]:
    def load(root: Path, download: bool) -> Pools:
        import torchvision.datasets as tvd

        cls = getattr(tvd, class_name)
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
        names = [c.split(" - ")[0] for c in train.classes] if short_names else list(train.classes)
        return Pools(
            names,
            {
                "train": (_to_nchw(train.data.numpy()), train.targets.numpy().astype(np.int64)),
                "test": (_to_nchw(test.data.numpy()), test.targets.numpy().astype(np.int64)),
            },
        )

    return load


register_dataset(
    "mnist",
    summary="handwritten digits 0-9 (LeCun et al. 1998)",
    channels=1,
    image_size=28,
    num_classes=10,
    splits="60,000 train / 10,000 test",
    files=_idx_files("MNIST"),
    source="http://yann.lecun.com/exdb/mnist/ or torchvision's mirrors; uncompress the .gz files",
)(_load_idx("MNIST", short_names=True))

register_dataset(
    "fashion-mnist",
    summary="Zalando clothing images, 10 classes (Xiao et al. 2017)",
    channels=1,
    image_size=28,
    num_classes=10,
    splits="60,000 train / 10,000 test",
    files=_idx_files("FashionMNIST"),
    source="https://github.com/zalandoresearch/fashion-mnist; uncompress the .gz files",
)(_load_idx("FashionMNIST", short_names=False))


register_dataset(
    "kmnist",
    summary="Kuzushiji-MNIST: cursive Japanese hiragana, 10 classes (Clanuwat et al. 2018)",
    channels=1,
    image_size=28,
    num_classes=10,
    splits="60,000 train / 10,000 test",
    files=_idx_files("KMNIST"),
    source="https://github.com/rois-codh/kmnist; uncompress the .gz files",
)(_load_idx("KMNIST", short_names=False))


#: The files of torchvision's CIFAR classes: their folder, then the batches and the metadata (as IDX_FILES).
CIFAR_FILES = {
    "CIFAR10": ("cifar-10-batches-py", ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                                        "data_batch_5", "test_batch", "batches.meta")),
    "CIFAR100": ("cifar-100-python", ("train", "test", "meta")),
}


def _cifar_files(class_name: str) -> Callable[[Path], list[Path]]:
    def files(root: Path) -> list[Path]:
        folder, names = CIFAR_FILES[class_name]
        return [root / folder / name for name in names]

    return files


def _load_cifar(class_name: str) -> Callable[[Path, bool], Pools]:
    def load(root: Path, download: bool) -> Pools:
        import torchvision.datasets as tvd

        cls = getattr(tvd, class_name)
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
        return Pools(
            list(train.classes),
            {
                "train": (_to_nchw(train.data), np.asarray(train.targets, dtype=np.int64)),
                "test": (_to_nchw(test.data), np.asarray(test.targets, dtype=np.int64)),
            },
        )

    return load


register_dataset(
    "cifar10",
    summary="32x32 colour photos, 10 classes (Krizhevsky 2009)",
    channels=3,
    image_size=32,
    num_classes=10,
    splits="50,000 train / 10,000 test",
    files=_cifar_files("CIFAR10"),
    source="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, extracted",
)(_load_cifar("CIFAR10"))

register_dataset(
    "cifar100",
    summary="32x32 colour photos, 100 fine classes (Krizhevsky 2009)",
    channels=3,
    image_size=32,
    num_classes=100,
    splits="50,000 train / 10,000 test",
    files=_cifar_files("CIFAR100"),
    source="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz, extracted",
)(_load_cifar("CIFAR100"))


#: The files torchvision's SVHN reads from the data folder (as IDX_FILES).
SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")


def _svhn_files(root: Path) -> list[Path]:
    return [root / name for name in SVHN_FILES]


@register_dataset(
    "svhn",
    summary="Street View House Numbers, 32x32 colour digits (Netzer et al. 2011)",
    channels=3,
    image_size=32,
    num_classes=10,
    splits="73,257 train / 26,032 test",
    files=_svhn_files,
    source="http://ufldl.stanford.edu/housenumbers/ (train_32x32.mat, test_32x32.mat)",
)
def _load_svhn(root: Path, download: bool) -> Pools:
    import torchvision.datasets as tvd

    train = tvd.SVHN(str(root), split="train", download=download)
    test = tvd.SVHN(str(root), split="test", download=download)
    return Pools(
        [str(k) for k in range(10)],
        {  # torchvision already gives (N, C, H, W) and maps label 10 to digit 0
            "train": (np.ascontiguousarray(train.data), train.labels.astype(np.int64)),
            "test": (np.ascontiguousarray(test.data), test.labels.astype(np.int64)),
        },
    )


@register_dataset(
    "digits",
    summary="scikit-learn's 8x8 handwritten digits, shipped inside scikit-learn (no download)",
    channels=1,
    image_size=8,
    num_classes=10,
    splits="1,797 images, split by imgclf",
    files=lambda root: [],
    source="scikit-learn",
)
def _load_digits(root: Path, download: bool) -> Pools:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel values are counts 0..16; map them onto 0..255 exactly as 17 distinct grey levels.
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # (N, 8, 8)
    return Pools(
        [str(name) for name in bunch.target_names],
        {"train": (_to_nchw(images), bunch.target.astype(np.int64))},
    )
