"""Randomized smoothing: the smoothed classifier's prediction, and its certified L2 radius.

The smoothed classifier ``g(x) = argmax_k P(f(x + e) = k)``, ``e ~ N(0, sigma^2 I)``, of any base classifier
``f`` provably keeps its prediction within an L2 ball of radius ``sigma * Phi^-1(p_A)`` around ``x``, where
``p_A`` is the top class's probability under the noise (Cohen, Rosenfeld and Kolter, "Certified Adversarial
Robustness via Randomized Smoothing", ICML 2019, Theorem 1). ``p_A`` is estimated by Monte Carlo sampling:
:func:`predict` is their PREDICT (with abstention), :func:`certificates` their CERTIFY (a one-sided Clopper-Pearson
lower bound on ``p_A`` from ``scipy.stats``). The noise is added in pixel space, to ``[0, 1]`` images, and not
clamped: the certificate is for the smoothed classifier as defined, whose base classifier sees values outside
``[0, 1]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from imgclf.runtime import channels_last

#: The prediction of an example on which the smoothed classifier abstains.
ABSTAIN = -1


@dataclass
class Certificates:
    """CERTIFY's answer for each of ``N`` examples.

    Attributes:
        prediction: ``int64`` ``(N,)``: the smoothed classifier's class, :data:`ABSTAIN` (-1) where the lower
            bound on the top class's probability is not above 1/2.
        p_lower: ``float64`` ``(N,)`` in ``[0, 1]``: the one-sided ``1 - alpha`` lower confidence bound on the
            probability that the base classifier returns the selected class under the noise.
        radius: ``float64`` ``(N,)``: the certified L2 radius in pixel units, ``sigma * Phi^-1(p_lower)``; 0 where
            abstained.
        sigma, n0, n, alpha: The noise's standard deviation (pixel units), the selection and estimation samples,
            and the failure probability of each certificate.
        forwards: Passes of the base classifier, counted in images (``N * (n0 + n)``).
    """

    prediction: np.ndarray
    p_lower: np.ndarray
    radius: np.ndarray
    sigma: float
    n0: int
    n: int
    alpha: float
    forwards: int = 0

    def certified_accuracy(self, labels: np.ndarray, radius: float) -> float:
        """The share of examples whose prediction is their label and whose certified radius is at least
        ``radius`` (Cohen et al.'s certified accuracy at ``radius``; abstentions count as wrong).

        Args:
            labels: ``int64`` ``(N,)``. radius: An L2 radius in pixel units, ``>= 0``.
        """
        correct = (self.prediction == np.asarray(labels)) & (self.radius >= radius)
        return float(correct.mean()) if len(correct) else math.nan

    @property
    def abstained(self) -> float:
        """The share of examples abstained on."""
        return float((self.prediction == ABSTAIN).mean()) if len(self.prediction) else math.nan


def noise_counts(model: torch.nn.Module, images: torch.Tensor, *, sigma: float, samples: int, num_classes: int,
                 batch_size: int = 1000, generator: torch.Generator | None = None) -> torch.Tensor:
    """How often the base classifier returns each class on ``samples`` noisy copies of each image.

    The copies of several images share a batch when ``samples`` is smaller than ``batch_size``, so a small
    ``samples`` (PREDICT's, CERTIFY's selection) runs at full batches too. The model's 4-D weights are held in the
    channels-last layout meanwhile (:func:`imgclf.runtime.channels_last`).

    Args:
        model: The base classifier, in eval mode: ``(B, C, H, W)`` to logits ``(B, K)``.
        images: ``float32`` ``(N, C, H, W)`` in ``[0, 1]``, on the model's device.
        sigma: The noise's standard deviation in pixel units, ``> 0``.
        samples: Noisy copies per image, ``>= 1``.
        num_classes: ``K``.
        batch_size: Noisy images per forward pass.
        generator: Draws the noise (on the images' device); None: torch's global generator.

    Returns:
        ``int64`` ``(N, K)`` counts on the CPU; each row sums to ``samples``.

    Raises:
        ValueError: If ``sigma``, ``samples`` or ``batch_size`` is out of range.
    """
    if not sigma > 0 or samples < 1 or batch_size < 1:
        raise ValueError(f"sigma must be > 0 and samples and batch_size >= 1, got {sigma}, {samples}, {batch_size}")
    count = len(images)
    counts = torch.zeros(count * num_classes, dtype=torch.int64)
    total = count * samples
    with torch.no_grad(), channels_last(model):  # (faster convolutions; the model is restored on the way out)
        for start in range(0, total, batch_size):
            owner = torch.arange(start, min(start + batch_size, total), device=images.device) // samples  # (B,)
            clean = images[owner]  # (B, C, H, W)
            noise = torch.randn(clean.shape, generator=generator, device=images.device, dtype=clean.dtype)
            predicted = model(clean + sigma * noise).argmax(1)  # (B,)
            counts += torch.bincount((owner * num_classes + predicted).cpu(), minlength=count * num_classes)
    return counts.view(count, num_classes)  # (N, K)


def lower_confidence_bound(successes: np.ndarray, trials: int, alpha: float) -> np.ndarray:
    """The one-sided ``1 - alpha`` Clopper-Pearson lower bound on a binomial proportion, per entry.

    It is the lower end of the exact two-sided ``1 - 2 alpha`` interval (``scipy.stats.binomtest``'s
    ``proportion_ci``, method ``"exact"``).

    Args:
        successes: Integer array of counts in ``[0, trials]``. trials: ``>= 1``. alpha: In ``(0, 1/2)``.

    Returns:
        ``float64`` array of the shape of ``successes``, in ``[0, 1]``.
    """
    flat = np.asarray(successes, dtype=np.int64).ravel()
    bounds = [stats.binomtest(int(k), trials).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
              for k in flat]
    return np.asarray(bounds, dtype=np.float64).reshape(np.shape(successes))


def max_certifiable_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius CERTIFY can give with ``n`` samples at failure probability ``alpha``: that of an example
    whose ``n`` noisy copies all return its class, ``sigma * Phi^-1(alpha ** (1 / n))`` (pixel units)."""
    return float(sigma * stats.norm.ppf(alpha ** (1.0 / n)))


def _check(sigma: float, alpha: float, **samples: int) -> None:
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 (the noise's standard deviation in pixel units), got {sigma}")
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5) (each certificate's failure probability), got {alpha}")
    for name, value in samples.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def predict(model: torch.nn.Module, images: torch.Tensor, *, sigma: float, num_classes: int, n: int = 100,
            alpha: float = 0.001, batch_size: int = 1000, generator: torch.Generator | None = None) -> np.ndarray:
    """PREDICT: the smoothed classifier's class of each image, or an abstention.

    Counts the base classifier's classes on ``n`` noisy copies; returns the top class when a two-sided binomial
    test of its count against the runner-up's rejects a tie at level ``alpha`` (``scipy.stats.binomtest``),
    else abstains. The answer differs from the smoothed classifier's with probability at most ``alpha``.

    Args:
        model: The base classifier, in eval mode: ``float32`` ``(B, C, H, W)`` in ``[0, 1]`` to logits ``(B, K)``.
        images: ``float32`` ``(N, C, H, W)`` in ``[0, 1]``, on the model's device.
        sigma: The noise's standard deviation in pixel units.
        num_classes: ``K``.
        n: Noisy copies per image.
        alpha: The test's level, in ``(0, 1/2)``.
        batch_size: Noisy images per forward pass.
        generator: Draws the noise; None: torch's global generator.

    Returns:
        ``int64`` ``(N,)`` classes, :data:`ABSTAIN` where abstained.

    Raises:
        ValueError: On ``sigma <= 0``, ``n < 1`` or ``alpha`` outside ``(0, 1/2)``.
    """
    _check(sigma, alpha, n=n)
    counts = noise_counts(model, images, sigma=sigma, samples=n, num_classes=num_classes, batch_size=batch_size,
                          generator=generator).numpy()
    order = np.argsort(-counts, axis=1, kind="stable")  # (N, K): classes by count, ties to the lower index
    top, runner_up = order[:, 0], order[:, 1]
    rows = np.arange(len(counts))
    first, second = counts[rows, top], counts[rows, runner_up]
    p_values = np.array([stats.binomtest(int(a), int(a + b), 0.5).pvalue for a, b in zip(first, second, strict=True)])
    return np.where(p_values <= alpha, top, ABSTAIN).astype(np.int64)


def certificates(model: torch.nn.Module, images: torch.Tensor, *, sigma: float, num_classes: int, n0: int = 100,
                 n: int = 10_000, alpha: float = 0.001, batch_size: int = 1000,
                 generator: torch.Generator | None = None) -> Certificates:
    """CERTIFY: each image's smoothed prediction with a certified L2 radius, or an abstention.

    Selects the top class on ``n0`` noisy copies, bounds its probability from below with ``n`` fresh copies (a
    one-sided Clopper-Pearson bound at level ``1 - alpha``: :func:`lower_confidence_bound`), and certifies the
    radius ``sigma * Phi^-1(p_lower)`` when the bound is above 1/2, else abstains. With probability at least
    ``1 - alpha`` per example, the smoothed classifier returns the prediction everywhere within the radius. No
    radius can exceed :func:`max_certifiable_radius` ``(sigma, n, alpha)``.

    Args:
        model: The base classifier, in eval mode: ``float32`` ``(B, C, H, W)`` in ``[0, 1]`` to logits ``(B, K)``.
        images: ``float32`` ``(N, C, H, W)`` in ``[0, 1]``, on the model's device.
        sigma: The noise's standard deviation in pixel units.
        num_classes: ``K``.
        n0: Selection samples per image (Cohen et al.: 100).
        n: Estimation samples per image (Cohen et al.: 100,000; imgclf's default 10,000).
        alpha: Each certificate's failure probability, in ``(0, 1/2)``.
        batch_size: Noisy images per forward pass.
        generator: Draws the noise; None: torch's global generator.

    Returns:
        :class:`Certificates`.

    Raises:
        ValueError: On ``sigma <= 0``, ``n0`` or ``n`` below 1, or ``alpha`` outside ``(0, 1/2)``.
    """
    _check(sigma, alpha, n0=n0, n=n)
    selection = noise_counts(model, images, sigma=sigma, samples=n0, num_classes=num_classes,
                             batch_size=batch_size, generator=generator).numpy()
    chosen = selection.argmax(1)  # (N,): ties to the lower index
    estimation = noise_counts(model, images, sigma=sigma, samples=n, num_classes=num_classes,
                              batch_size=batch_size, generator=generator).numpy()
    p_lower = lower_confidence_bound(estimation[np.arange(len(chosen)), chosen], n, alpha)
    certified = p_lower > 0.5
    radius = np.where(certified, sigma * stats.norm.ppf(np.clip(p_lower, 0.5, 1.0)), 0.0)
    return Certificates(np.where(certified, chosen, ABSTAIN).astype(np.int64), p_lower, radius, sigma, n0, n, alpha,
                        forwards=len(images) * (n0 + n))
