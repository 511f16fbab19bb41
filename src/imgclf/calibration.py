"""Calibration: whether a classifier's confidence can be believed, and temperature scaling.

A model is calibrated when, among the examples it classifies with confidence ``p`` (its top softmax
probability), a share ``p`` is right. The measures (Guo et al., "On Calibration of Modern Neural
Networks", ICML 2017; Naeini et al. 2015 for ECE and MCE):

- **ECE**, expected calibration error: confidences put in ``B`` equal-width bins over ``[0, 1]``,
  ``sum_b (n_b / N) |accuracy_b - confidence_b|``;
- **MCE**, maximum calibration error: ``max_b |accuracy_b - confidence_b|`` over non-empty bins;
- **NLL**, the mean negative log-likelihood of the true class (cross-entropy, in nats);
- **Brier score**, ``mean_i sum_k (p_ik - y_ik)^2`` over the one-hot labels ``y`` (Brier 1950, the
  multi-class form: 0 is perfect, 2 the worst).

Bins are ``[lower, upper)`` with a confidence of exactly 1 in the last bin, as torchmetrics'
``multiclass_calibration_error`` bins them (the tests compare the two). **Temperature scaling**
divides the logits by one scalar ``T > 0`` fitted to minimise the validation split's NLL (L-BFGS on
``log T``); it changes no prediction, only the confidences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from imgclf.notebook import ResultHTML, Table

#: Confidence bins of ECE, MCE and the reliability diagram, as Guo et al. use.
DEFAULT_BINS = 15


@dataclass
class ReliabilityBin:
    """One confidence bin: ``[lower, upper)`` (the last includes 1), the examples in it, and their mean
    confidence and accuracy (fractions in ``[0, 1]``; None for an empty bin)."""

    lower: float
    upper: float
    count: int
    confidence: float | None
    accuracy: float | None


@dataclass
class CalibrationMetrics:
    """Calibration of one set of predictions.

    Attributes:
        ece: Expected calibration error, in ``[0, 1]``. mce: Maximum calibration error, in ``[0, 1]``.
        nll: Mean negative log-likelihood of the true class, in nats (``>= 0``).
        brier: Multi-class Brier score, in ``[0, 2]``.
        accuracy: Top-1 accuracy. confidence: Mean top softmax probability. n: Examples.
        temperature: The temperature the logits were divided by (1: as the model gives them).
        bins: The reliability diagram's bins.
    """

    ece: float
    mce: float
    nll: float
    brier: float
    accuracy: float
    confidence: float
    n: int
    temperature: float
    bins: list[ReliabilityBin]

    def row(self) -> list[Any]:
        """ECE, MCE, NLL, Brier, accuracy, mean confidence and temperature: a row of :data:`TABLE_COLUMNS`."""
        return [self.ece, self.mce, self.nll, self.brier, self.accuracy, self.confidence, self.temperature]

    def _repr_html_(self) -> str:
        return ResultHTML(f"Calibration of {self.n:,} predictions",
                          tables=[Table(TABLE_COLUMNS, [self.row()])]).render()


#: The columns of :meth:`CalibrationMetrics.row`.
TABLE_COLUMNS = ("ECE", "MCE", "NLL", "Brier", "accuracy", "confidence", "temperature")


def _as_tensors(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray
                ) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.as_tensor(logits).detach().to(torch.float64).cpu()
    labels = torch.as_tensor(labels).detach().to(torch.int64).cpu()
    if logits.ndim != 2 or labels.shape != (logits.shape[0],) or not len(labels):
        raise ValueError(f"logits must be (N, K) and labels (N,) with N >= 1, got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    if not torch.isfinite(logits).all():
        raise ValueError("logits hold NaN or infinite values")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got {int(labels.min())} to {int(labels.max())}")
    return logits, labels


def calibration_metrics(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, *,
                        bins: int = DEFAULT_BINS, temperature: float = 1.0) -> CalibrationMetrics:
    """ECE, MCE, NLL, Brier score and the reliability bins of ``softmax(logits / temperature)``.

    Args:
        logits: ``float`` ``(N, K)``: the model's logits (not probabilities).
        labels: ``int`` ``(N,)`` in ``[0, K)``.
        bins: Equal-width confidence bins, at least 1.
        temperature: Divides the logits (> 0; from :func:`fit_temperature`).

    Raises:
        ValueError: Shapes that do not match, an empty set, non-finite logits, labels out of range, fewer
            than 1 bin or a temperature that is not positive.
    """
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    if not temperature > 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    logits, labels = _as_tensors(logits, labels)
    scaled = logits / temperature
    probabilities = scaled.softmax(1)
    confidence, predictions = probabilities.max(1)
    correct = (predictions == labels).to(torch.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence.numpy(), side="right") - 1, 0, bins - 1)
    table, ece, mce = [], 0.0, 0.0
    for b in range(bins):
        members = torch.from_numpy(index == b)
        count = int(members.sum())
        mean_confidence = float(confidence[members].mean()) if count else None
        mean_accuracy = float(correct[members].mean()) if count else None
        if count:
            gap = abs(mean_accuracy - mean_confidence)  # type: ignore[operator]
            ece += count / len(labels) * gap
            mce = max(mce, gap)
        table.append(ReliabilityBin(float(edges[b]), float(edges[b + 1]), count, mean_confidence, mean_accuracy))
    one_hot = F.one_hot(labels, logits.shape[1]).to(torch.float64)
    return CalibrationMetrics(
        ece=ece, mce=mce, nll=float(F.cross_entropy(scaled, labels)),
        brier=float(((probabilities - one_hot) ** 2).sum(1).mean()),
        accuracy=float(correct.mean()), confidence=float(confidence.mean()), n=len(labels),
        temperature=float(temperature), bins=table)


def fit_temperature(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    """The temperature ``T`` that minimises the NLL of ``softmax(logits / T)`` on these examples
    (Guo et al. 2017: fit on the validation split, apply to the test split).

    L-BFGS over ``log T`` (so ``T`` stays positive), from ``T = 1``; ``T`` is kept within
    ``[0.01, 100]``.

    Args:
        logits: ``float`` ``(N, K)``. labels: ``int`` ``(N,)`` in ``[0, K)``.

    Raises:
        ValueError: As :func:`calibration_metrics` for the inputs.
    """
    logits, labels = _as_tensors(logits, labels)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    fitted = float(log_t.detach().clamp(math.log(0.01), math.log(100.0)).exp())
    return fitted if math.isfinite(fitted) else 1.0


@dataclass
class Calibration:
    """``metrics.json`` ``calibration``: the test split's calibration as the model gives it and after
    temperature scaling fitted on the validation split.

    Attributes:
        bins: Confidence bins. temperature: Fitted on the validation split.
        val_nll, val_nll_scaled: The validation split's NLL before and after scaling (the fit lowers it).
        test, test_scaled: The test split's calibration before and after.
    """

    bins: int
    temperature: float
    val_nll: float
    val_nll_scaled: float
    test: CalibrationMetrics
    test_scaled: CalibrationMetrics

    def _repr_html_(self) -> str:
        table = Table(("test split", *TABLE_COLUMNS), [["as the model gives it", *self.test.row()],
                                                        ["temperature-scaled", *self.test_scaled.row()]])
        return ResultHTML(f"Calibration of {self.test.n:,} test predictions ({self.bins} bins)",
                          [f"temperature {self.temperature:.4f}, fitted on the validation split (NLL "
                           f"{self.val_nll:.4f} to {self.val_nll_scaled:.4f})"], [table]).render()


def calibrate(test_logits: torch.Tensor | np.ndarray, test_labels: torch.Tensor | np.ndarray,
              val_logits: torch.Tensor | np.ndarray, val_labels: torch.Tensor | np.ndarray, *,
              bins: int = DEFAULT_BINS) -> Calibration:
    """Temperature fitted on the validation logits, and the test split's calibration before and after.

    Args:
        test_logits, val_logits: ``float`` ``(N, K)`` and ``(M, K)`` logits. test_labels, val_labels:
            ``int`` ``(N,)`` and ``(M,)`` in ``[0, K)``. bins: Confidence bins.

    Raises:
        ValueError: As :func:`calibration_metrics`.
    """
    temperature = fit_temperature(val_logits, val_labels)
    return Calibration(
        bins=bins, temperature=temperature,
        val_nll=calibration_metrics(val_logits, val_labels, bins=bins).nll,
        val_nll_scaled=calibration_metrics(val_logits, val_labels, bins=bins, temperature=temperature).nll,
        test=calibration_metrics(test_logits, test_labels, bins=bins),
        test_scaled=calibration_metrics(test_logits, test_labels, bins=bins, temperature=temperature))


@dataclass
class EpsCalibration:
    """Calibration on an evaluation's worst-case adversarial images at one eps (pixel units): each
    attacked image's first successful adversarial example, the image itself where every attack failed."""

    eps: float
    metrics: CalibrationMetrics


@torch.no_grad()
def calibration_under_attack(model: torch.nn.Module, images: torch.Tensor, eps: Sequence[float],
                             labels: torch.Tensor, *, bins: int = DEFAULT_BINS, batch_size: int = 512
                             ) -> list[EpsCalibration]:
    """The calibration of ``model`` on the worst-case adversarial images of each eps.

    Args:
        model: In eval mode (left so); ``[0, 1]`` images in, logits out. Batches go to its device.
        images: ``float32`` ``(E, N, C, H, W)`` in ``[0, 1]``: per eps, the adversarial images (as
            :class:`imgclf.attacks.RobustnessResult`'s ``adversarial["images"]``).
        eps: The ``E`` radii in pixel units, ascending as the images are.
        labels: ``int64`` ``(N,)``. bins: Confidence bins. batch_size: Images per forward pass.

    Raises:
        ValueError: ``images``, ``eps`` and ``labels`` that do not match.
    """
    radii = [float(e) for e in eps]
    if images.ndim != 5 or images.shape[0] != len(radii) or images.shape[1] != len(labels):
        raise ValueError(f"images must be (E, N, C, H, W) for {len(radii)} eps and {len(labels)} labels, got "
                         f"{tuple(images.shape)}")
    from imgclf.evaluation import logits_of

    return [EpsCalibration(radius, calibration_metrics(logits_of(model, batch, batch_size=batch_size), labels,
                                                       bins=bins))
            for radius, batch in zip(radii, images, strict=True)]
