"""The certify stage: randomized smoothing's certified L2 accuracy at each radius with the empirical bracket beside
it (:func:`imgclf.certification.certify`), on a seeded stratified test subset; committed unit by unit
(:class:`~imgclf.stages.attack.BatchFiles`) so that a killed evaluation resumes, shared by the processes of
``torchrun``, and kept in ``metrics.json``'s ``certifications`` under a key of its settings and the model (one with
the same key is reused)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from imgclf import record
from imgclf.certification import Certificates, CertificationResult, certify
from imgclf.certification.evaluation import radius_cap_warning
from imgclf.checkpoint import model_fingerprint
from imgclf.data import stratified_subset
from imgclf.data.augment import parse_augment
from imgclf.errors import UsageError
from imgclf.record import Certification, read_metrics, section
from imgclf.run_folder import RunFolder
from imgclf.settings import Settings
from imgclf.stages.attack import BatchFiles, stored
from imgclf.stages.parts import RunParts, progress_bar


def trained_sigma(parts: RunParts) -> float | None:
    """The sigma of the Gaussian-noise augmentation the run trained with (``--augment gaussian-noise:sigma=S``), or
    None."""
    return next((options["sigma"] for name, options in parse_augment(parts.config.data.augment)
                 if name == "gaussian-noise"), None)


def suggest_certification(parts: RunParts) -> None:
    """Where the run trained with Gaussian noise and holds no certification: the command that certifies it (a
    certification costs ``n0 + n`` passes per image, too many to run unasked in ``imgclf run``)."""
    sigma = trained_sigma(parts)
    if sigma is not None and parts.folder is not None and not read_metrics(parts.folder.path).certifications:
        parts.log(f"note: trained with Gaussian noise of sigma {sigma:g}, a base classifier for randomized "
                  f"smoothing: imgclf certify {parts.folder.path} --sigma {sigma:g} gives its certified L2 accuracy")


def certify_run(parts: RunParts, settings: Settings) -> Certification:
    """The certified-robustness evaluation with ``settings``' ``certify`` section (see
    :meth:`imgclf.pipeline.Run.certify`); rank 0 writes it into the run folder and returns its record (the other
    processes an empty one). An evaluation of the same settings and model that the folder holds is reused.

    Raises:
        UsageError: On settings the evaluation refuses (a radius or sample count out of range).
    """
    config, dist = settings.config, parts.dist
    chosen = config.certify
    folder = parts.writes() if dist.is_main else parts.folder
    labels = parts.data.test.labels
    rows = stratified_subset(labels.numpy(), None if chosen.examples == "all" else int(chosen.examples), config.seed)
    parts.model.eval()
    asked = {**dataclasses.asdict(chosen), "examples": len(rows), "seed": config.seed,
             "model": model_fingerprint(parts.model)}
    key = record.evaluation_key(asked)
    earlier = None
    if dist.is_main and folder is not None:
        earlier = stored(read_metrics(folder.path).certifications, key,
                         record.certification_folder(folder.path, key) / record.CERTIFICATES)
    if dist.gather(earlier is not None)[0]:  # rank 0 decides for every process
        if earlier is not None:
            parts.log(f"reusing the certification {key} of {earlier.finished or 'an earlier run'}: the same model, "
                      "settings and examples (delete its entry in metrics.json to run it again)")
            log_certification(parts, earlier)
            return earlier
        return Certification(key, asked, len(rows), chosen.sigma, chosen.n0, chosen.n, chosen.alpha)
    store = BatchFiles(record.certification_folder(folder.path, key) / record.BATCHES) \
        if dist.is_main and folder is not None else None
    if store is not None and store.count():
        parts.log(f"continuing certification {key}: {store.count()} unit(s) were committed before it stopped")
    parts.log(f"randomized smoothing: sigma {chosen.sigma:g}, n0 {chosen.n0:,}, n {chosen.n:,}, alpha "
              f"{chosen.alpha:g} on {len(rows)} test images" + (", with SmoothAdv and APGD-CE (L2) at radii "
                                                                 f"{', '.join(f'{r:g}' for r in chosen.radii)}"
                                                                 if chosen.attack else ""))
    trained = trained_sigma(parts)
    if trained is not None and trained != chosen.sigma:  # a certificate of another noise than the model learnt
        parts.log.warn(f"warning: the model was trained with Gaussian noise of sigma {trained:g}, and is "
                       f"certified at sigma {chosen.sigma:g}: give --sigma {trained:g} unless that is meant")
    cap = radius_cap_warning(chosen.sigma, chosen.n, chosen.alpha, chosen.radii)
    if cap is not None:  # before the work: the user may want to stop and raise n
        parts.log.warn(f"warning: {cap}")
    with progress_bar(parts, "certify", "unit") as advance:
        try:
            result = certify(parts.model, parts.data.test.float_images(rows), labels[torch.as_tensor(rows)],
                             sigma=chosen.sigma, radii=chosen.radii, n0=chosen.n0, n=chosen.n, alpha=chosen.alpha,
                             attack=chosen.attack, attack_steps=chosen.attack_steps,
                             attack_samples=chosen.attack_samples, attack_n=chosen.attack_n,
                             batch_size=chosen.batch_size, seed=config.seed, device=parts.device, store=store,
                             distributed=dist, progress=advance)
        except ValueError as error:
            raise UsageError(str(error)) from None
    if folder is None or store is None:  # another process than rank 0
        return Certification(key, asked, len(rows), chosen.sigma, chosen.n0, chosen.n, chosen.alpha)
    done = _save_certification(parts, folder, key, asked, result, rows)
    store.remove()
    log_certification(parts, done, shown=[cap])
    return done


def _save_certification(parts: RunParts, folder: RunFolder, key: str, asked: dict[str, Any],
                        result: CertificationResult, rows: np.ndarray) -> Certification:
    """``certifications/KEY/certificates.npz``, and the evaluation added to (or, run again, replacing its earlier
    self in) ``metrics.json``'s ``certifications``."""
    found: Certificates = result.certificates
    extra = {} if result.smoothed_correct is None or result.base_correct is None else {
        "smoothed_correct": result.smoothed_correct, "base_correct": result.base_correct}
    RunFolder(record.certification_folder(folder.path, key)).write_arrays(
        record.CERTIFICATES, test_positions=rows, indices=np.asarray(parts.data.test.indices[rows]),
        labels=result.labels, prediction=found.prediction, p_lower=found.p_lower, radius=found.radius,
        radii=np.asarray([row.radius for row in result.rows]), **extra)
    done = Certification(key, asked, result.n, found.sigma, found.n0, found.n, found.alpha, result.rows,
                         result.abstained, result.clean_accuracy, result.max_radius, result.median_radius,
                         result.violations, result.warnings, result.seconds, result.forwards_per_example,
                         result.backwards_per_example, datetime.now(UTC).isoformat(timespec="seconds"),
                         parts.dist.world_size)
    raw = record.with_evaluations(folder.read_json(record.METRICS, default={}))
    kept = [c for c in raw.get(record.CERTIFICATIONS, []) if isinstance(c, dict) and c.get("key") != key]
    raw[record.CERTIFICATIONS] = [*kept, section(done)]
    raw.setdefault("timing", {})["certify_seconds"] = result.seconds
    folder.write_json(record.METRICS, raw)
    return done


def log_certification(parts: RunParts, done: Certification, *, shown: list[str | None] | None = None) -> None:
    """The bracket at each radius, the cost and the warnings in the log (the warnings also on stderr), but those
    in ``shown`` (already printed)."""
    for row in done.rows:
        beside = "" if row.base_attack is None else f"; the model alone under APGD-CE {100 * row.base_attack:.1f}%"
        parts.log(f"smoothed classifier {row.bracket()}{beside}")
    median = "" if done.median_radius is None else f", median certified radius {done.median_radius:.3g}"
    parts.log(f"abstained on {100 * done.abstained:.1f}% of {done.n}{median}; {done.forwards_per_example:,.0f} "
              f"forward and {done.backwards_per_example:,.0f} backward passes per example, {done.seconds:.0f} s")
    for note in done.warnings:
        if note not in (shown or []):
            parts.log.warn(f"warning: {note}")
