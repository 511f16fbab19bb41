"""The corrupt stage: accuracy and ECE under the common corruptions at each severity, with the mCE and relative
mCE against a baseline run; and the rule by which ``imgclf run`` runs it (:func:`corruption_wanted`)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from imgclf import record
from imgclf.checkpoint import model_fingerprint
from imgclf.config import CorruptionConfig
from imgclf.corruptions.evaluation import (
    CorruptionEvaluation,
    against_baseline,
    corruption_robustness,
    corruption_samples,
)
from imgclf.corruptions.registry import auto_skips
from imgclf.data import stratified_subset
from imgclf.errors import UsageError
from imgclf.record import read_metrics, section
from imgclf.settings import Settings
from imgclf.stages.parts import RunParts, progress_bar


def corrupt(parts: RunParts, settings: Settings, *, baseline: str | Path | None = None) -> CorruptionEvaluation:
    """The corruption evaluation with ``settings``' corruptions, severities and examples (see
    :meth:`imgclf.pipeline.Run.corrupt`); writes ``metrics.json``'s ``corruptions`` (replacing an earlier one)
    and ``corruptions.npz``.

    Raises:
        UsageError: On images the corruptions cannot take, or a baseline that is not comparable.
    """
    folder, data, config = parts.writes(), parts.data, settings.config
    names, levels, chosen = settings.corruptions, settings.severities, config.corruption
    labels = data.test.labels
    rows = stratified_subset(labels.numpy(), None if chosen.examples == "all" else int(chosen.examples), config.seed)
    baseline = chosen.baseline if baseline is None else baseline
    metrics = read_metrics(folder.path)
    earlier = _comparable_baseline(baseline, metrics.dataset, len(rows), len(labels), config.seed) \
        if baseline else None
    parts.model.eval()
    parts.log(f"common corruptions: {len(names)} corruption(s) x severities {', '.join(map(str, levels))} on "
              f"{len(rows)} test images")
    images = data.test.float_images(rows)
    with progress_bar(parts, "corruptions", "corruption") as advance:
        try:
            result = corruption_robustness(
                parts.model.to(parts.device), images, labels[torch.as_tensor(rows)], corruptions=names,
                severities=levels, seed=config.seed, indices=rows.tolist(), batch_size=config.eval.batch_size,
                bins=config.eval.calibration_bins, progress=advance)
            if earlier is not None:
                result = against_baseline(result, earlier, name=str(baseline))
        except ValueError as error:
            raise UsageError(str(error)) from None
    result.settings["model"] = model_fingerprint(parts.model)
    result.finished = datetime.now(UTC).isoformat(timespec="seconds")
    _save_samples(parts, settings, images[0], int(rows[0]))
    if metrics.corruptions is not None:
        parts.log("replacing the earlier corruption evaluation in metrics.json")
    folder.update_metrics({"corruptions": section(result), "timing": {"corruption_seconds": result.seconds}})
    _log_corruptions(parts, result)
    return result


def _save_samples(parts: RunParts, settings: Settings, image: torch.Tensor, row: int) -> None:
    """``corruptions.npz``: one test image (``float32`` ``(C, H, W)``, test position ``row``) under every
    corruption and severity, with the model's predictions, for the report."""
    names, levels = settings.corruptions, settings.severities
    grid = corruption_samples(image, corruptions=names, severities=levels, seed=settings.config.seed, index=row)
    with torch.no_grad():
        predicted = parts.model(grid.flatten(0, 1).to(parts.device)).argmax(1).cpu()  # (K * (S + 1),)
    parts.writes().write_arrays(record.CORRUPTION_SAMPLES, images=grid.numpy(),
                                label=np.asarray(int(parts.data.test.labels[row])),
                                predictions=predicted.view(grid.shape[:2]).numpy(), corruptions=np.array(names),
                                severities=np.array(levels))


def _comparable_baseline(path: str | Path, dataset: str, n: int, test_size: int, seed: int) -> CorruptionEvaluation:
    """The corruption evaluation of the baseline run ``path``, which must be of ``dataset`` and of the same ``n``
    test images (the same seed, or the whole test split).

    Raises:
        UsageError: If ``path`` is not a run folder, is of another data set, holds no corruption evaluation, or
            was evaluated on other images.
    """
    folder = Path(path)
    if not (folder / record.METRICS).is_file():
        raise UsageError(f"--baseline {str(path)!r} is not a run folder with a metrics.json; give a run folder "
                         "evaluated under the same corruptions")
    metrics = read_metrics(folder)
    if metrics.dataset != dataset:
        raise UsageError(f"the baseline {str(path)!r} is a run on {metrics.dataset!r}, this one on {dataset!r}: "
                         "corruption errors are only comparable on the same data")
    earlier = metrics.corruptions
    if earlier is None:
        raise UsageError(f"the baseline {str(path)!r} has no corruption evaluation; run imgclf corrupt {path} "
                         "first, with the same corruptions, severities and examples")
    if earlier.n != n or (earlier.settings.get("seed") != seed and n < test_size):
        raise UsageError(f"the baseline {str(path)!r} was evaluated on {earlier.n} test images with seed "
                         f"{earlier.settings.get('seed')}, this run on {n} with seed {seed}: not the same images; "
                         "evaluate both with the same seed, or both with --corruption-examples all")
    return earlier


def _log_corruptions(parts: RunParts, result: CorruptionEvaluation) -> None:
    for name in result.corruptions:
        accuracies = "  ".join(f"{result.accuracy(name, s):.3f}" for s in result.severities)
        parts.log(f"{name:>15}: accuracy by severity {accuracies}  (mean error {result.errors[name]:.4f})")
    against = "" if result.mce is None or result.relative_mce is None else \
        f"; against {result.baseline}: mCE {100 * result.mce:.1f}%, relative mCE {100 * result.relative_mce:.1f}%"
    parts.log(f"mean corruption error {result.mean_error:.4f} (clean error {1 - result.clean_accuracy:.4f}, "
              f"n={result.n}, {result.seconds:.0f} s){against}")


def corruption_wanted(parts: RunParts, *, attack: bool) -> bool:
    """Whether ``imgclf run`` runs the corruption stage: always with ``corruption.stage`` ``on`` (where the
    images are at least 8x8), never with ``off``; with ``auto`` where any other ``corruption`` setting
    differs from its default (the stage was asked for), else where there is an attack stage and the work
    is within :func:`imgclf.corruptions.registry.auto_skips`'s rule. A skipped stage is logged with the
    reason and the command that runs it."""
    stage, size = parts.config.corruption.stage, parts.data.spec.image_size
    if stage == "off":
        return _skipped(parts, "corruption.stage is off", log=False)
    if min(size) < 8:
        return _skipped(parts, f"they need images of at least 8x8 pixels, these are {size}", remedy=False)
    if stage == "on":
        return True
    chosen = parts.config.corruption
    if chosen != dataclasses.replace(CorruptionConfig(), stage=stage):
        return True  # corruptions, severities, examples or a baseline set: asked for
    if not attack:
        return _skipped(parts, "no attack stage in this run")
    test = len(parts.data.test)
    total = test if chosen.examples == "all" else min(int(chosen.examples), test)
    why = auto_skips(images=total, shape=parts.data.spec.input_shape, corruptions=len(parts.settings.corruptions),
                     severities=len(parts.settings.severities))
    return True if why is None else _skipped(parts, why)


def _skipped(parts: RunParts, why: str, *, log: bool = True, remedy: bool = True) -> bool:
    """Record (for the report's list of what it lacks) and log that ``imgclf run`` skips the corruption stage, and
    why; returns False."""
    if log:
        how = f"; run them with imgclf corrupt {parts.writes().path} or --corruption-stage on" if remedy else ""
        parts.log(f"note: common corruptions skipped: {why}{how}")
    if parts.folder is not None:
        parts.folder.update_metrics({"skipped": {"corruptions": why}})
    return False
