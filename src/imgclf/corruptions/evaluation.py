"""Accuracy and calibration under common corruptions, and the mean corruption error against a baseline.

The measures are those of Hendrycks and Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations" (ICLR 2019). With ``E(s, c)`` the top-1 error under corruption ``c`` at
severity ``s`` and ``E_clean`` the error on the same images uncorrupted:

- the **mean corruption error** of a model alone is ``mean_c mean_s E(s, c)`` (how CIFAR-10-C results are
  usually quoted);
- against a baseline model ``b`` (the paper used AlexNet), the **corruption error** of ``c`` is
  ``CE(c) = sum_s E(s, c) / sum_s E_b(s, c)``, the **mCE** is ``mean_c CE(c)``, and the **relative mCE** is
  the mean over ``c`` of ``sum_s (E(s, c) - E_clean) / sum_s (E_b(s, c) - E_b_clean)``: how much accuracy
  the corruptions take away, relative to what they take from the baseline. Both are ratios (1: as the
  baseline; below 1: more robust).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from imgclf.calibration import DEFAULT_BINS, calibration_metrics
from imgclf.corruptions.apply import corrupt
from imgclf.corruptions.registry import SEVERITIES, corruption_names
from imgclf.evaluation import logits_of
from imgclf.notebook import ResultHTML, Table


@dataclass
class CorruptionEntry:
    """One corruption at one severity: top-1 accuracy and expected calibration error (fractions in
    ``[0, 1]``) on ``n`` images."""

    corruption: str
    severity: int
    accuracy: float
    ece: float
    n: int


@dataclass
class CorruptionEvaluation:
    """``metrics.json`` ``corruptions``: the model's accuracy under each corruption and severity.

    Attributes:
        settings: What was asked for: corruptions, severities, examples, seed, and the model's fingerprint.
        n: Test images (a seeded stratified subset). clean_accuracy: Their uncorrupted top-1 accuracy.
        entries: One per corruption and severity, in the benchmark's order.
        errors: Per corruption, the mean top-1 error over the severities.
        mean_error: The mean of ``errors``: the mean corruption error of the model alone.
        baseline: The baseline run folder, or None. corruption_errors: Per corruption, ``CE(c)`` against the
            baseline. mce, relative_mce: The paper's mCE and relative mCE against the baseline (ratios), or None.
        seconds: Wall time. finished: ISO time it ended.
    """

    settings: dict[str, Any]
    n: int
    clean_accuracy: float
    entries: list[CorruptionEntry]
    errors: dict[str, float]
    mean_error: float
    baseline: str | None = None
    corruption_errors: dict[str, float] = field(default_factory=dict)
    mce: float | None = None
    relative_mce: float | None = None
    seconds: float = 0.0
    finished: str = ""

    @property
    def corruptions(self) -> list[str]:
        """The corruptions evaluated, in order."""
        return list(dict.fromkeys(entry.corruption for entry in self.entries))

    @property
    def severities(self) -> list[int]:
        """The severities evaluated, ascending."""
        return sorted({entry.severity for entry in self.entries})

    def accuracy(self, corruption: str, severity: int) -> float | None:
        """The accuracy under ``corruption`` at ``severity``, or None where it was not evaluated."""
        return next((e.accuracy for e in self.entries if e.corruption == corruption and e.severity == severity),
                    None)

    def _repr_html_(self) -> str:
        """Accuracy per corruption and severity with the mean error (and mCE against a baseline), as Jupyter
        shows it."""
        facts = [f"{self.n:,} test images, clean accuracy {self.clean_accuracy:.4f}, {self.seconds:.1f} s",
                 f"mean corruption error {self.mean_error:.4f}"
                 + ("" if self.mce is None else f"; mCE {self.mce:.4f} against {self.baseline}")]
        severities = self.severities
        rows = [[name, *(self.accuracy(name, s) for s in severities), self.errors.get(name),
                 self.corruption_errors.get(name)] for name in self.corruptions]
        columns = ["corruption", *(f"severity {s}" for s in severities), "mean error", "CE against the baseline"]
        return ResultHTML("Accuracy under common corruptions", facts, [Table(columns, rows)]).render()


def corruption_robustness(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
    corruptions: Sequence[str] | None = None,  # None: all fifteen
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    indices: Sequence[int] | None = None,  # each image's position in the test split (seeds its corruption)
    batch_size: int = 256,
    bins: int = DEFAULT_BINS,  # ECE's confidence bins
    progress: Callable[[int, int], None] | None = None,  # (done, total) after each corruption and severity
) -> CorruptionEvaluation:
    """Top-1 accuracy and ECE of ``model`` on ``images`` under each corruption at each severity.

    Args:
        model: In eval mode (left so); ``[0, 1]`` images in, logits out. Batches go to its device.
        images: ``float32`` ``(N, C, H, W)`` in ``[0, 1]``, ``C`` 1 or 3, at least 8x8.
        labels: ``int64`` ``(N,)``.
        corruptions: Registered names (groups and ``all`` expanded already: :func:`parse_corruptions`, or
            :class:`imgclf.settings.Settings`'s ``corruptions``). severities: Integers from 1 to 5.

    Returns:
        The evaluation, without a baseline (:func:`against_baseline` adds one); ``settings`` holds the
        corruptions, severities, examples and seed.

    Raises:
        ValueError: On an unknown corruption or severity, or images :func:`corrupt` refuses.
    """
    names = tuple(corruptions) if corruptions is not None else corruption_names()
    levels = tuple(severities)
    unknown = [name for name in names if name not in corruption_names()] + \
        [str(level) for level in levels if level not in SEVERITIES]
    if unknown or not names or not levels:
        raise ValueError(f"corruptions must be registered names ({', '.join(corruption_names())}) and severities "
                         f"integers from 1 to 5; got {', '.join(unknown) or 'none'}")
    labels = torch.as_tensor(labels).cpu()
    if images.ndim != 4 or len(images) != len(labels) or not len(labels):
        raise ValueError(f"images must be (N, C, H, W) with one label each, got {tuple(images.shape)} and "
                         f"{tuple(labels.shape)}")
    indices = list(range(len(images))) if indices is None else [int(i) for i in indices]
    start = time.perf_counter()
    clean = (logits_of(model, images, batch_size=batch_size).argmax(1) == labels).float().mean().item()
    entries, total = [], len(names) * len(levels)
    for name in names:
        for severity in levels:
            logits = torch.cat([
                logits_of(model, corrupt(images[i:i + batch_size], name, severity, seed=seed,
                                         indices=indices[i:i + batch_size]), batch_size=batch_size)
                for i in range(0, len(images), batch_size)])
            calibration = calibration_metrics(logits, labels, bins=bins)
            entries.append(CorruptionEntry(name, severity, calibration.accuracy, calibration.ece, len(labels)))
            if progress is not None:
                progress(len(entries), total)
    errors = {name: float(np.mean([1 - e.accuracy for e in entries if e.corruption == name])) for name in names}
    return CorruptionEvaluation(
        settings={"corruptions": list(names), "severities": list(levels), "examples": len(labels), "seed": seed},
        n=len(labels), clean_accuracy=clean, entries=entries, errors=errors,
        mean_error=float(np.mean(list(errors.values()))), seconds=time.perf_counter() - start)


def against_baseline(evaluation: CorruptionEvaluation, baseline: CorruptionEvaluation, *,
                     name: str) -> CorruptionEvaluation:
    """``evaluation`` with its corruption errors, mCE and relative mCE against ``baseline`` (the run ``name``).

    Raises:
        ValueError: If the baseline lacks a corruption and severity the evaluation has, or the baseline's
            summed error under a corruption (or the part the corruption added) is 0, which leaves the ratio
            undefined.
    """
    corruption_errors, relative = {}, []
    clean_error, base_clean_error = 1 - evaluation.clean_accuracy, 1 - baseline.clean_accuracy
    for corruption in evaluation.corruptions:
        ours, theirs = [], []
        for severity in evaluation.severities:
            base = baseline.accuracy(corruption, severity)
            if base is None:
                raise ValueError(f"the baseline {name} has no result for {corruption} at severity {severity}; "
                                 "evaluate it with the same corruptions and severities")
            ours.append(1 - evaluation.accuracy(corruption, severity))  # type: ignore[operator]
            theirs.append(1 - base)
        if sum(theirs) == 0 or sum(theirs) - len(theirs) * base_clean_error == 0:
            raise ValueError(f"the baseline {name} makes no error under {corruption} beyond its clean error, so "
                             "the corruption error relative to it is undefined; choose a weaker baseline")
        corruption_errors[corruption] = sum(ours) / sum(theirs)
        relative.append((sum(ours) - len(ours) * clean_error) / (sum(theirs) - len(theirs) * base_clean_error))
    return dataclasses.replace(evaluation, baseline=name, corruption_errors=corruption_errors,
                               mce=float(np.mean(list(corruption_errors.values()))),
                               relative_mce=float(np.mean(relative)))


def corruption_samples(image: torch.Tensor, *, corruptions: Sequence[str], severities: Sequence[int],
                       seed: int = 0, index: int = 0) -> torch.Tensor:
    """One image under every corruption and severity, for the report's grid.

    Args:
        image: ``float32`` ``(C, H, W)`` in ``[0, 1]``. index: Its position in the test split (as
            :func:`corruption_robustness` was given it: the same corrupted image results).

    Returns:
        ``float32`` ``(len(corruptions), len(severities) + 1, C, H, W)`` in ``[0, 1]``: per corruption, the
        clean image then each severity.
    """
    rows = []
    for name in corruptions:
        rows.append(torch.cat([image[None]] + [corrupt(image[None], name, s, seed=seed, indices=[index])
                                               for s in severities]))
    return torch.stack(rows)
