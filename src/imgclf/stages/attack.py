"""The attack stage: robust accuracy under each configured attack and eps, the worst case and the sanity checks,
on a seeded stratified test subset; committed unit by unit (:class:`BatchFiles`) so that a killed evaluation
resumes, shared by the processes of ``torchrun``, and kept in ``metrics.json``'s ``evaluations`` under a key
of its settings and the model (an evaluation with the same key is reused)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from imgclf import record
from imgclf.attacks import AttackSpec, RobustnessResult, robustness
from imgclf.attacks.checks import advice
from imgclf.calibration import calibration_under_attack
from imgclf.checkpoint import load_model, model_fingerprint
from imgclf.data import stratified_subset
from imgclf.errors import UsageError
from imgclf.record import AttackRecord, read_metrics, section
from imgclf.run_folder import RunFolder, atomic_write_bytes
from imgclf.runtime import progress
from imgclf.settings import Settings
from imgclf.stages.parts import RunParts


class _HasKey(Protocol):
    key: str


_Keyed = TypeVar("_Keyed", bound=_HasKey)


class BatchFiles:
    """The units an evaluation has finished (:class:`imgclf.attacks.robust_accuracy.BatchStore`), one file
    each in ``RUN/evaluations/KEY/batches/``: written atomically, the SHA-256 of the ``torch.save`` payload
    (64 hex digits and a newline) before the payload, read with ``weights_only=True``. A unit file whose
    checksum fails (a damaged disk block, a file changed by hand) or that cannot be read is run again
    (its result is the same)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def load(self, name: str) -> dict[str, Any] | None:
        path = self.folder / f"{name}.pt"
        if not path.is_file():
            return None
        try:
            digest, _, payload = path.read_bytes().partition(b"\n")
            if hashlib.sha256(payload).hexdigest().encode() != digest:
                return None
            loaded = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError):
            return None
        return loaded if isinstance(loaded, dict) else None

    def save(self, name: str, result: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(result, buffer)
        payload = buffer.getvalue()
        atomic_write_bytes(self.folder / f"{name}.pt", hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)

    def count(self) -> int:
        """Units committed so far."""
        return len(list(self.folder.glob("*.pt"))) if self.folder.is_dir() else 0

    def remove(self) -> None:
        """Delete the folder once the evaluation is saved whole."""
        shutil.rmtree(self.folder, ignore_errors=True)


def stored(entries: Sequence[_Keyed], key: str, file: Path) -> _Keyed | None:
    """The entry of ``entries`` (evaluations or certifications of ``metrics.json``) with ``key``, where its
    ``file`` is there too, to reuse instead of running it again; else None."""
    earlier = next((entry for entry in entries if entry.key == key), None)
    return earlier if earlier is not None and file.is_file() else None


def attack(parts: RunParts, settings: Settings) -> RobustnessResult:
    """The robustness evaluation with ``settings``' attacks, eps values and examples (see
    :meth:`imgclf.pipeline.Run.attack`); rank 0 writes it into the run folder.

    Raises:
        UsageError: On an eps the images do not allow (an L2 eps too large).
    """
    config, dist = settings.config, parts.dist
    folder = parts.writes() if dist.is_main else parts.folder  # (the other ranks read it, where they have it)
    rows = stratified_subset(parts.data.test.labels.numpy(), settings.examples, config.seed)
    parts.model.eval()
    surrogate = load_model(config.attack.surrogate, device=parts.device) \
        if config.attack.surrogate and dist.is_main else None
    asked = evaluation_settings(settings, len(rows), parts.model)
    if surrogate is not None:  # another surrogate is another transfer check: another evaluation
        asked["surrogate"] = model_fingerprint(surrogate)
    key = record.evaluation_key(asked)
    earlier = None
    if dist.is_main and folder is not None:
        earlier = stored(read_metrics(folder.path).evaluations, key,
                         record.evaluation_folder(folder.path, key) / record.ADVERSARIAL_EXAMPLES)
    if dist.gather(earlier is not None)[0]:  # rank 0 decides for every process
        if earlier is None:  # another process: rank 0 reports the reused evaluation
            return RobustnessResult([], float("nan"), 0, config.seed)
        parts.log(f"reusing the evaluation {key} of {earlier.finished or 'an earlier run'}: the same model, "
                  "attacks, eps and examples (delete its entry in metrics.json to run it again)")
        result = RobustnessResult(earlier.robustness, earlier.attack.clean_accuracy, earlier.attack.n,
                                  earlier.attack.seed, skipped=earlier.attack.skipped, checks=earlier.attack.checks,
                                  seconds=earlier.seconds, plan=earlier.attack.plan,
                                  minimal_norm=earlier.attack.minimal_norm)
        log_attack(parts, result)
        return result
    store = BatchFiles(record.evaluation_folder(folder.path, key) / record.BATCHES) \
        if dist.is_main and folder is not None else None
    result = _attacked(parts, settings, rows, store, surrogate, key)
    if folder is not None and store is not None:
        _save_evaluation(parts, folder, key, asked, result, settings, rows)
        store.remove()
        log_attack(parts, result)
    return result


def _attacked(parts: RunParts, settings: Settings, rows: np.ndarray, store: BatchFiles | None,
              surrogate: torch.nn.Module | None, key: str) -> RobustnessResult:
    """:func:`imgclf.attacks.robustness` on the test images at positions ``rows``, with a progress bar,
    going on from the units ``store`` holds."""
    config, data, dist = settings.config, parts.data, parts.dist
    with progress(desc="attacks", unit="batch", leave=False, quiet=parts.quiet) as bar:

        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)
            if done == total:  # what comes next takes a while too
                bar.set_description("attacks done; sanity checks")

        committed = store.count() if store is not None else 0
        if committed:
            parts.log(f"continuing evaluation {key}: {committed} batch(es) were committed before it stopped")
        try:
            return robustness(
                parts.model, data.test.float_images(rows), data.test.labels[torch.as_tensor(rows)],
                attacks=list(settings.attacks), eps_values=settings.eps_values, device=parts.device,
                batch_size=config.attack.batch_size, seed=config.seed, progress=advance, store=store,
                distributed=dist, run_checks=dist.is_main, surrogate=surrogate, cascade=config.attack.cascade,
                plan=list(settings.plan), tolerance=config.attack.plan_tolerance,
                minimal_norm=settings.minimal_norm,
            )
        except ValueError as error:  # e.g. an L2 eps larger than the images allow
            raise UsageError(str(error)) from None


def evaluation_settings(settings: Settings, examples: int, model: torch.nn.Module) -> dict[str, Any]:
    """What identifies a robustness evaluation (:func:`imgclf.record.evaluation_key`): every attack's settings,
    the eps values, the number of examples, the batch size, the seed, the converging plan's steps and tolerance
    and the minimal-norm attack (where they run) and the model's fingerprint."""
    config = settings.config
    extra: dict[str, Any] = {"plan": [_identity(spec) for spec in settings.plan],
                             "plan_tolerance": config.attack.plan_tolerance} if settings.plan else {}
    if settings.minimal_norm is not None:
        extra["minimal_norm"] = _identity(settings.minimal_norm)
    return {"attacks": [_identity(spec) for spec in settings.attacks], "norm": config.attack.norm,
            "eps": [float(e) for e in settings.eps_values], "examples": examples,
            "batch_size": config.attack.batch_size, "seed": config.seed, "cascade": config.attack.cascade,
            **extra, "model": model_fingerprint(model)}


def _identity(spec: AttackSpec) -> dict[str, Any]:
    """An attack's fields in an evaluation's identity; ``draw`` only where it is not 0, so that run folders written
    by versions without the field still find their evaluations."""
    fields = dataclasses.asdict(spec)
    if not fields["draw"]:
        del fields["draw"]
    return fields


def _save_evaluation(parts: RunParts, folder: RunFolder, key: str, asked: dict[str, Any], result: RobustnessResult,
                     settings: Settings, rows: np.ndarray) -> None:
    """``evaluations/KEY/adversarial.npz`` and ``adversarial.pt``, the calibration under attack, and the
    evaluation added to (or, run again, replacing its earlier self in) ``metrics.json``'s ``evaluations``."""
    config, data = settings.config, parts.data
    labels = data.test.labels[torch.as_tensor(rows)]
    calibration = calibration_under_attack(
        parts.model, result.adversarial["images"], sorted({row.eps for row in result.entries}), labels,
        bins=config.eval.calibration_bins, batch_size=config.attack.batch_size) if result.adversarial else []
    where = RunFolder(record.evaluation_folder(folder.path, key))
    where.write_arrays(record.ADVERSARIAL_EXAMPLES, **result.examples)
    buffer = io.BytesIO()
    torch.save({**result.adversarial, "test_positions": torch.as_tensor(rows),
                "indices": torch.as_tensor(data.test.indices[rows]), "labels": labels}, buffer)
    atomic_write_bytes(where.file(record.ADVERSARIAL_IMAGES), buffer.getvalue())
    attack_record = AttackRecord(result.n, result.clean_accuracy, result.seed, config.attack.norm,
                                 [spec.label for spec in (*settings.attacks, *settings.plan)],
                                 "stratified subset of the test split, seeded (attack.examples)",
                                 skipped=result.skipped, checks=result.checks, warnings=result.warnings,
                                 cascade=config.attack.cascade, plan=result.plan,
                                 minimal_norm=result.minimal_norm)
    evaluation = record.Evaluation(key, asked, attack_record, result.entries, result.seconds,
                                   datetime.now(UTC).isoformat(timespec="seconds"), parts.dist.world_size,
                                   calibration)
    raw = record.with_evaluations(folder.read_json(record.METRICS, default={}))
    kept = [e for e in raw.get(record.EVALUATIONS, []) if isinstance(e, dict) and e.get("key") != key]
    raw[record.EVALUATIONS] = [*kept, section(evaluation)]
    raw.setdefault("timing", {})["attack_seconds"] = result.seconds
    folder.write_json(record.METRICS, raw)


def log_attack(parts: RunParts, result: RobustnessResult) -> None:
    """The evaluation's rows and the sanity checks in the log; a failed check also on stderr."""
    for note in result.skipped:
        parts.log(f"note: {note}")
    for entry in result.entries:
        rate = "" if entry.target_success_rate is None else f", reached target {entry.target_success_rate:.4f}"
        parts.log(f"{entry.attack.upper():>12} eps {entry.eps:.4f}: robust accuracy {entry.accuracy:.4f}, "
                  f"success rate {entry.success_rate:.4f}{rate} (n={entry.n})")
    for outcome in result.plan:
        parts.log(f"plan at eps {outcome.eps:.4f}: {outcome.reason} "
                  f"({outcome.passes_per_example:,.0f} passes per example)")
    found = result.minimal_norm
    if found is not None:
        median = "none: it found fewer than half" if found.median is None else f"{found.median:.4g}"
        parts.log(f"{found.attack} (minimal norm, {found.norm}): found {found.found} of {found.attacked}, median "
                  f"smallest radius {median}; the curve at each eps: " + ", ".join(
                      f"{row.eps:.4g} {row.curve_accuracy:.4f}" for row in found.agreement))
        for note in found.warnings:
            parts.log.warn(f"note: {note}")
    failed = [check for check in result.checks if check["status"] == "failed"]
    parts.log(f"sanity checks: {sum(c['status'] == 'passed' for c in result.checks)} passed, {len(failed)} "
              f"failed, {sum(c['status'] == 'not run' for c in result.checks)} not run")
    for check in failed:  # on stderr even with --quiet: the numbers above may not be what they seem
        parts.log.warn(f"warning: check '{check['name']}' failed: {check['detail']}")
    for note in advice(result.checks, result.plan, run=str(parts.folder.path) if parts.folder else "RUN",
                       attacks=[entry.attack for entry in result.entries]):
        parts.log.warn(f"what to try: {note}")
