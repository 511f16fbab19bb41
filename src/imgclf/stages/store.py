"""The run folder's start and its reading back: a new folder's configuration, splits and facts; an existing
folder's settings and the very data splits it trained on, checked against what it recorded (``splits.npz``);
the test images the report shows (``samples.npz``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgclf import record
from imgclf.checkpoint import load_model
from imgclf.config import RunConfig, config_from_dict, config_to_dict, dump_config, load_config
from imgclf.data import DataSplits, load_data
from imgclf.data.loading import dataset_stem
from imgclf.distributed import Distributed
from imgclf.errors import UsageError
from imgclf.models.normalization import native_image_size
from imgclf.record import SCHEMA_VERSION, DataCounts, read_metrics, section
from imgclf.run_folder import RunFolder, RunLog, atomic_write_text
from imgclf.runtime import seed_everything, select_device
from imgclf.settings import Settings, norm_resets_eps, resolve
from imgclf.stages.parts import RunParts
from imgclf.trust import is_user_code, trust_code


def prepare(config: RunConfig, out: str | Path | None, quiet: bool
            ) -> tuple[Distributed, RunLog, torch.device, DataSplits, Settings]:
    """What a new run folder starts from: this process's place under torchrun, the log (quiet but on rank 0),
    the device, the data (at a library model's native size unless told) and the settings resolved on it.

    Raises:
        UsageError: If ``out`` exists and is not empty, or the data cannot be loaded.
    """
    dist = Distributed.from_env()
    if out is not None and dist.is_main:
        RunFolder.check_available(out)
    if is_user_code(config.model.name):  # named by the caller (a file naming it was checked when read)
        trust_code(config.model.name)
    log = RunLog(quiet=quiet or not dist.is_main)
    seed_everything(config.seed)
    device = dist.device(select_device(config.device))
    config = with_native_size(config)
    data = load_data(config.data, seed=config.seed)
    spec = data.spec
    return dist, log, device, data, resolve(config, channels=spec.channels, class_names=list(spec.class_names))


def with_native_size(config: RunConfig) -> RunConfig:
    """``config`` with ``data.image_size`` set to a library model's native input size where its weights
    have one and no ``--image-size`` was given (:func:`imgclf.models.normalization.native_image_size`)."""
    if config.data.image_size is not None:
        return config
    size = native_image_size(config.model)
    if size is None:
        return config
    values = config_to_dict(config)
    values["data"]["image_size"] = size
    return config_from_dict(values)


def create_folder(out: str | Path | None, settings: Settings, data: DataSplits, env: dict[str, Any], log: RunLog,
                  *, suffix: str = "") -> RunFolder:
    """A new run folder (``out``, or ``runs/<dataset>-<model><suffix>-<time>``) holding what a run holds before
    training: config, splits, bad files, and the run's facts; the log then writes into it."""
    config, spec = settings.config, data.spec
    folder = RunFolder.create(out, default_name=f"{dataset_stem(spec.name)}-{config.model.source.short_name}{suffix}")
    log.attach(folder)
    atomic_write_text(folder.config_path, dump_config(config))
    save_splits(folder, data)
    if data.bad_files:
        atomic_write_text(folder.file(record.BAD_FILES), "".join(f"{p}\t{r}\n" for p, r in data.bad_files))
    folder.update_metrics({
        "schema_version": SCHEMA_VERSION,
        "dataset": spec.name,
        "model": config.model.name,
        "num_classes": spec.num_classes,
        "class_names": list(spec.class_names),
        "seed": config.seed,
        "data": section(DataCounts(len(data.train), len(data.val), len(data.test), list(spec.input_shape),
                                   bad_files=len(data.bad_files), origins=data.origins)),
        "data_notes": data.notes,
        "environment": env,
    })
    return folder


def open_parts(path: str | Path, *, overrides: dict[str, Any] | None = None, quiet: bool = False,
               trust_code: bool = False, changed_data: bool = False) -> RunParts:
    """A finished run read back from its folder (see :meth:`imgclf.pipeline.Run.open`).

    Raises:
        UsageError: If ``path`` is not a run folder, an override is invalid, the data cannot be loaded or
            changed (without ``changed_data``), or the folder names code that is not trusted.
    """
    dist = Distributed.from_env()
    folder = RunFolder.open(path)
    settings, device, data = reload(folder, overrides, trust_code=trust_code, changed_data=changed_data,
                                    writes=dist.is_main)
    device = dist.device(device)
    model = load_model(folder.path, device=device, trust_code=trust_code)
    log = RunLog(folder if dist.is_main else None, quiet=quiet or not dist.is_main)
    return RunParts(folder, settings, data, model, device, log, quiet=quiet or not dist.is_main, dist=dist)


def run_config(folder: RunFolder, overrides: dict[str, Any] | None, *, trust_code: bool) -> RunConfig:
    """A run folder's ``config.yaml`` with ``overrides``.

    Raises:
        UsageError: If it is missing or empty (a run folder always writes it whole: an empty one is damaged,
            not the defaults), or invalid.
    """
    path = folder.config_path
    if not path.is_file() or path.stat().st_size == 0:
        raise UsageError(f"{str(path)!r} is missing or empty; restore it from a copy of the run (its settings "
                         "cannot be guessed)")
    return load_config(path, overrides, trust_code=trust_code)


def reload(folder: RunFolder, overrides: dict[str, Any] | None, *, trust_code: bool = False,
           changed_data: bool = False, writes: bool = True) -> tuple[Settings, torch.device, DataSplits]:
    """A run folder's settings (with ``overrides``), device, and the very data splits it trained on.

    Args:
        writes: This process writes the folder (rank 0 under torchrun).

    Raises:
        UsageError: If the data set changed since the run began (:func:`data_changes`), unless ``changed_data``
            accepts it; the change is then added to ``metrics.json``'s ``data_notes``, which the report shows.
    """
    config = run_config(folder, norm_resets_eps(dict(overrides or {})), trust_code=trust_code)
    seed_everything(config.seed)
    device = select_device(config.device)
    saved = folder.read_arrays(record.SPLITS)  # (read once: the positions, then the fingerprints)
    data = load_data(config.data, seed=config.seed, indices=load_splits(folder, saved))
    changes = data_changes(saved or {}, data)
    if changes and not changed_data:
        raise UsageError(f"the data of {str(folder.path)!r} changed since the run began: {'; '.join(changes)}; "
                         "evaluate it on the data it was trained on, or pass --changed-data to go on (the report "
                         "then says so)")
    if changes and writes:
        notes = read_metrics(folder.path).data_notes
        added = [f"evaluated on changed data: {change}" for change in changes]
        folder.update_metrics({"data_notes": notes + [note for note in added if note not in notes]})
    spec = data.spec
    return resolve(config, channels=spec.channels, class_names=list(spec.class_names)), device, data


def save_splits(folder: RunFolder, data: DataSplits) -> None:
    """``splits.npz``: per split its pool and positions, its fingerprint (:meth:`ImageSplit.fingerprint`)
    and its images per class."""
    arrays = {}
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        arrays[f"{name}_pool"] = np.array(split.source)
        arrays[f"{name}_indices"] = split.indices
        arrays[f"{name}_fingerprint"] = np.array(split.fingerprint())
        arrays[f"{name}_class_counts"] = np.bincount(split.labels.numpy(), minlength=data.spec.num_classes)
    folder.write_arrays(record.SPLITS, **arrays)


def data_changes(arrays: dict[str, np.ndarray], data: DataSplits) -> list[str]:
    """How the splits loaded now differ from those ``splits.npz`` (its ``arrays``) recorded when the run began,
    one line each (empty where they are the same, or the folder is of a release that recorded no
    fingerprints)."""
    changes = []
    for name in ("train", "val", "test"):
        saved = arrays.get(f"{name}_fingerprint")
        split = getattr(data, name)
        if saved is None or str(saved) == split.fingerprint():
            continue
        counts = arrays.get(f"{name}_class_counts")
        now = np.bincount(split.labels.numpy(), minlength=data.spec.num_classes)
        if counts is not None and counts.shape == now.shape and not np.array_equal(counts, now):
            moved = [f"{data.spec.class_names[k]} {int(counts[k])} -> {int(now[k])}"
                     for k in np.flatnonzero(counts != now)[:3]]
            changes.append(f"the {name} split's labels changed ({', '.join(moved)} images)")
        else:
            changes.append(f"the {name} split's images changed (the same positions now hold other pixels)")
    return changes


def load_splits(folder: RunFolder, arrays: dict[str, np.ndarray] | None
                 ) -> dict[str, tuple[str, np.ndarray]] | None:
    """``splits.npz`` (its ``arrays``, None where the folder has none): per split, the pool it draws from and
    its positions in that pool (checked against the data set by :func:`imgclf.data.load_data`).

    Raises:
        UsageError: If the file is unreadable, lacks a split, or a split's positions are not a
            1-D array of distinct non-negative integers (the train and test splits non-empty).
    """
    if arrays is None:
        return None
    path = str(folder.file(record.SPLITS))
    splits: dict[str, tuple[str, np.ndarray]] = {}
    for name in ("train", "val", "test"):
        pool, positions = arrays.get(f"{name}_pool"), arrays.get(f"{name}_indices")
        if pool is None or positions is None:
            raise UsageError(f"{path!r} lacks the {name} split ({name}_pool, {name}_indices); it is not imgclf's "
                             "or is damaged: restore it, or train the run again")
        problem = None
        if pool.ndim != 0 or pool.dtype.kind != "U":
            problem = f"{name}_pool must be one string"
        elif positions.ndim != 1 or positions.dtype.kind not in "iu":
            problem = f"{name}_indices must be a 1-D array of integers"
        elif len(positions) and positions.min() < 0:
            problem = f"{name}_indices holds negative positions"
        elif len(np.unique(positions)) != len(positions):
            problem = f"{name}_indices repeats positions"
        elif name != "val" and not len(positions):
            problem = f"the {name} split is empty"
        else:
            problem = next((f"the {name} split shares positions with the {other} split" for other, (o_pool, o_rows)
                            in splits.items() if o_pool == str(pool) and np.intersect1d(o_rows, positions).size),
                           None)
        if problem:
            raise UsageError(f"{path!r}: {problem}; restore it, or train the run again")
        splits[name] = (str(pool), positions.astype(np.int64))
    return splits


def save_samples(folder: RunFolder, images: Callable[[np.ndarray], np.ndarray], labels: np.ndarray,
                 predictions: np.ndarray, seed: int) -> None:
    """Write ``samples.npz`` for the report: 16 seeded random test examples and 8 misclassified ones.

    Args:
        images: ``images(rows)`` gives ``float32`` ``(len(rows), C, H, W)`` in ``[0, 1]`` for test positions ``rows``.
        labels, predictions: ``int`` ``(N_test,)``.
    """
    rng = np.random.default_rng(seed)
    shown = np.sort(rng.choice(len(labels), size=min(16, len(labels)), replace=False))
    wrong = np.flatnonzero(predictions != labels)
    wrong = np.sort(rng.choice(wrong, size=min(8, len(wrong)), replace=False))
    folder.write_arrays(
        record.SAMPLES,
        images=images(shown), labels=labels[shown], predictions=predictions[shown],
        error_images=images(wrong), error_labels=labels[wrong], error_predictions=predictions[wrong],
    )
