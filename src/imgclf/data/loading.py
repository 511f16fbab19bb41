"""From a :class:`~imgclf.config.DataConfig` to train/val/test splits in memory."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from imgclf.data.builtin import DATASETS, Pools, fetch, resolve_data_dir
from imgclf.data.containers import DatasetSpec, DataSplits, ImageSplit, LazyImages
from imgclf.data.folder import ImageFiles, load_image_files, scan_folder
from imgclf.data.hugging_face import is_hf_dataset, scan_hf_dataset
from imgclf.data.labels_file import scan_labels_file
from imgclf.data.names import dataset_location, is_data_file, is_labels_file
from imgclf.errors import UsageError

if TYPE_CHECKING:
    from imgclf.config import DataConfig


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split positions ``0..N-1`` into ``(keep, held_out)`` with ``fraction`` held out.

    Stratified by label (scikit-learn's ``train_test_split``), seeded. Falls
    back to a plain seeded split when some class has a single example.

    Args:
        labels: ``int`` array of shape ``(N,)``.
        fraction: Share held out, in ``(0, 1)``.
        seed: Random seed.

    Returns:
        Two sorted ``int64`` position arrays.

    Raises:
        UsageError: If either side would be empty.
    """
    positions = np.arange(len(labels))
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 else None
    n_held = int(round(fraction * len(labels)))
    if n_held < 1 or n_held >= len(labels):
        raise UsageError(
            f"cannot hold out {fraction:.0%} of {len(labels)} examples: one side would be empty"
        )
    if stratify is not None:
        n_held = min(max(n_held, int((counts > 0).sum())), len(labels) - int((counts > 0).sum()))
    keep, held = train_test_split(positions, test_size=n_held, random_state=seed, stratify=stratify)
    return np.sort(keep).astype(np.int64), np.sort(held).astype(np.int64)


def stratified_subset(labels: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """Sorted positions of a seeded subset of exactly ``n`` examples (all if ``n`` is None or >= N).

    Stratified by label where both the subset and the rest can hold every
    class; otherwise a plain seeded draw, so the size is always ``n``.
    """
    if n is None or n >= len(labels):
        return np.arange(len(labels), dtype=np.int64)
    classes = len(np.unique(labels))
    if min(n, len(labels) - n) < classes or np.bincount(labels)[np.unique(labels)].min() < 2:
        return np.sort(np.random.default_rng(seed).choice(len(labels), size=n, replace=False)).astype(np.int64)
    _, chosen = stratified_split(labels, n / len(labels), seed)
    return chosen


#: The data-set flags each layout reads.
LAYOUT_FLAGS = {
    "a labels file": ("--image-root", "--path-column", "--label-column"),
    "a Hugging Face data set": ("--image-column", "--label-column"),
}


def dataset_stem(dataset: str) -> str:
    """A data set's short name for run-folder and file names: a built-in name as it is, a folder's last
    part, a data file's name without its suffix (``data/labels.csv`` -> ``labels``)."""
    name = Path(dataset).name or dataset
    return Path(name).stem if is_data_file(name) else name


def scan_images(path: Path, *, image_root: Path | None = None, path_column: str | None = None,
                label_column: str | None = None, image_column: str | None = None,
                paths_outside_root: bool = False) -> ImageFiles:
    """The listing of a labels file (:func:`imgclf.data.labels_file.scan_labels_file`), a Hugging Face data
    set on disk (:func:`imgclf.data.hugging_face.scan_hf_dataset`) or an image folder
    (:func:`imgclf.data.folder.scan_folder`), told apart by the path's suffix and contents.

    Raises:
        UsageError: See those three; a flag given for a layout that does not read it (see
            :data:`LAYOUT_FLAGS`).
    """
    layout = "a labels file" if is_labels_file(str(path)) else "a Hugging Face data set" if is_hf_dataset(
        path) else "an image folder"
    given = {"--image-root": image_root, "--path-column": path_column, "--label-column": label_column,
             "--image-column": image_column}
    wrong = [flag for flag, value in given.items() if value is not None and flag not in LAYOUT_FLAGS.get(layout, ())]
    if wrong:
        readers = [name for name, flags in LAYOUT_FLAGS.items() if set(wrong) & set(flags)]
        raise UsageError(f"{', '.join(wrong)} appl{'ies' if len(wrong) == 1 else 'y'} to {' or '.join(readers)}, "
                         f"not to {layout} ({str(path)!r})")
    if layout == "a labels file":
        return scan_labels_file(path, image_root=image_root, path_column=path_column, label_column=label_column,
                                paths_outside_root=paths_outside_root)
    if layout == "a Hugging Face data set":
        return scan_hf_dataset(path, image_column=image_column, label_column=label_column)
    return scan_folder(path)


def _load_pools(config: DataConfig) -> tuple[str, Pools, list[tuple[str, str]], list[str]]:
    name = config.dataset
    location = dataset_location(name, resolve_data_dir(config.data_dir), tuple(DATASETS))
    if location is None:
        pools = fetch(DATASETS[name], resolve_data_dir(config.data_dir), config.download)
        return name, pools, [], []
    listing = scan_images(location,
                          image_root=Path(config.image_root) if config.image_root is not None else None,
                          path_column=config.path_column, label_column=config.label_column,
                          image_column=config.image_column, paths_outside_root=config.paths_outside_root)
    pools, bad, notes = load_image_files(listing, image_size=config.image_size, channels=config.channels,
                                         bad_files=config.bad_files, cache=config.cache)
    return str(Path(name)), pools, bad, notes


def _adapt(images: np.ndarray, config: DataConfig) -> np.ndarray:
    """Apply ``channels`` and ``image_size`` to a pool (``uint8`` NCHW) that does not match them.

    Image folders are decoded at the asked size and channels already, so their
    (possibly memory-mapped) pools pass through untouched.
    """
    size_ok = config.image_size is None or tuple(images.shape[-2:]) == (config.image_size,) * 2
    if size_ok and config.channels in (None, images.shape[1]):
        return images
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    if config.channels == 3 and tensor.shape[1] == 1:
        tensor = tensor.expand(-1, 3, -1, -1)  # grey -> RGB by repetition
    elif config.channels == 1 and tensor.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # ITU-R 601-2 luma, as Pillow's "L"
        tensor = (tensor.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    if config.image_size is not None and tuple(tensor.shape[-2:]) != (config.image_size,) * 2:
        import torchvision.transforms.v2.functional as tvf

        tensor = tvf.resize(tensor, [config.image_size, config.image_size], antialias=True)
    return tensor.contiguous().numpy()


def channel_stats(split: ImageSplit, *, max_images: int = 20000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of a split's images, in [0, 1] units.

    Computed over all images, or an evenly spaced sample of ``max_images`` of them.
    """
    rows = np.linspace(0, len(split) - 1, num=min(len(split), max_images)).round().astype(np.int64)
    images = split.uint8_images(None if len(rows) == len(split) else np.unique(rows))
    flat = images.transpose(0, 1).reshape(images.shape[1], -1).double() / 255.0  # (C, N*H*W)
    mean = flat.mean(dim=1)
    std = flat.std(dim=1).clamp_min(1e-3)  # a constant channel must not divide by zero
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def load_data(
    config: DataConfig, *, seed: int, indices: dict[str, tuple[str, np.ndarray]] | None = None
) -> DataSplits:
    """Load a data set and split it into train, val and test.

    Data sets without a test split lose a seeded stratified ``test_fraction``
    of train to test; those without a val split then lose ``val_fraction`` of
    what is left to val (80/20 by default).

    Args:
        config: Data settings.
        seed: Seed for every split.
        indices: ``{split: (pool, positions)}`` from a run folder's
            ``splits.npz``; when given, those exact examples are used.

    Returns:
        The splits, with images as ``uint8`` tensors (see :class:`ImageSplit`).

    Raises:
        UsageError: Unknown data set, unreadable folder, or impossible split.
        DataNotFoundError: Built-in data set files missing and not downloadable.
    """
    name, pools, bad_files, notes = _load_pools(config)
    raw = {split: (_adapt(x, config), y) for split, (x, y) in pools.pools.items()}
    if indices is None:
        indices = split_indices(
            {split: y for split, (_, y) in raw.items()},
            val_fraction=config.val_fraction,
            test_fraction=config.test_fraction,
            train_examples=config.train_examples,
            seed=seed,
            test_from=config.test_from,
        )
    total_bytes = sum(images.nbytes for images, _ in raw.values())
    lazy = total_bytes > config.memory_limit_mb * 2**20 and all(
        isinstance(images, np.memmap) for images, _ in raw.values()
    )
    if lazy:
        notes.append(
            f"the decoded images ({total_bytes / 2**20:,.0f} MB) exceed data.memory_limit_mb "
            f"({config.memory_limit_mb:,} MB): reading batches from the disk cache with worker processes"
        )
    splits = {}
    for split, (pool, positions) in indices.items():
        if pool not in raw:
            raise UsageError(f"saved split {split!r} refers to pool {pool!r}, which this data set lacks")
        images, labels = raw[pool]
        if len(positions) and (positions.min() < 0 or positions.max() >= len(labels)):
            raise UsageError(f"saved split {split!r} does not match the data set: it names positions outside "
                             f"0..{len(labels) - 1} of pool {pool!r}")
        held = LazyImages(images, positions) if lazy else torch.from_numpy(np.ascontiguousarray(images[positions]))
        splits[split] = ImageSplit(held, torch.from_numpy(labels[positions]), pool, positions)
    train = splits["train"]
    mean, std = channel_stats(train)
    _, channels, height, width = train.images.shape
    spec = DatasetSpec(
        name=name,
        class_names=tuple(pools.class_names),
        channels=int(channels),
        image_size=(int(height), int(width)),
        mean=mean,
        std=std,
    )
    sizes = {pool: len(labels) for pool, (_, labels) in raw.items()}
    return DataSplits(spec, splits["train"], splits["val"], splits["test"], bad_files, notes,
                      origins=describe_splits(indices, sizes))


def describe_splits(indices: dict[str, tuple[str, np.ndarray]], sizes: dict[str, int]) -> dict[str, str]:
    """Where each split's examples come from, in words: ``{"test": "20% of the data set's train split
    (stratified, seeded)", ...}``.

    Args:
        indices: ``{split: (pool, positions)}`` as :func:`split_indices` returns.
        sizes: ``{pool: number of examples}``.
    """
    described = {}
    for split in sorted(indices, key=("train", "val", "test").index):
        pool, positions = indices[split]
        if pool == split and len(positions) == sizes[pool]:
            described[split] = f"the data set's {pool} split"
        else:
            share = len(positions) / sizes[pool]
            described[split] = f"{share:.0%} of the data set's {pool} split (stratified, seeded)"
    return described


def split_indices(
    labels: dict[str, np.ndarray],
    *,
    val_fraction: float,
    test_fraction: float,
    train_examples: int | None,
    seed: int,
    test_from: str = "train",
) -> dict[str, tuple[str, np.ndarray]]:
    """Decide which examples of which pool form each split.

    Args:
        labels: ``{pool: labels}`` for the pools the data set has (``train``
            always, ``val`` and ``test`` optionally).
        val_fraction, test_fraction: Held-out shares where a pool is missing.
        train_examples: Optional size of a stratified subset of train.
        seed: Random seed.
        test_from: Without a test pool, the pool that gives up ``test_fraction`` of its
            examples to test: ``"train"`` or ``"val"``.

    Returns:
        ``{"train" | "val" | "test": (pool, sorted positions)}``.

    Raises:
        UsageError: ``test_from="val"`` where the data set has a test split or no val split;
            a split that would be empty, or ``train_examples`` above the training images left.
    """
    train_pos = np.arange(len(labels["train"]), dtype=np.int64)
    val_pos = np.arange(len(labels["val"]), dtype=np.int64) if "val" in labels else None
    result: dict[str, tuple[str, np.ndarray]] = {}
    if test_from == "val" and ("test" in labels or val_pos is None):
        raise UsageError("--test-from val draws the test split from the val split of a data set without a test "
                         f"split; this one has {', '.join(sorted(labels))}")
    if "test" in labels:
        result["test"] = ("test", np.arange(len(labels["test"]), dtype=np.int64))
    elif test_from == "val" and val_pos is not None:
        keep, held = stratified_split(labels["val"], test_fraction, seed)
        result["test"] = ("val", held)
        val_pos = keep
    else:
        keep, held = stratified_split(labels["train"], test_fraction, seed)
        result["test"] = ("train", held)
        train_pos = keep
    if val_pos is not None:
        result["val"] = ("val", val_pos)
    else:
        keep, held = stratified_split(labels["train"][train_pos], val_fraction, seed + 1)
        result["val"] = ("train", train_pos[held])
        train_pos = train_pos[keep]
    if train_examples is not None:
        if train_examples > len(train_pos):
            raise UsageError(f"--train-examples {train_examples} is more than the {len(train_pos)} training images "
                             "left after the val and test splits; give at most that, or drop the flag to use them all")
        train_pos = train_pos[stratified_subset(labels["train"][train_pos], train_examples, seed + 2)]
    result["train"] = ("train", train_pos)
    return result
