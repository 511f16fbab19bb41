"""Randomized smoothing on base classifiers whose probabilities under the noise are known exactly: a linear
classifier's smoothed version is certified up to its distance to the hyperplane, never beyond it; a tie is
abstained on; the largest certifiable radius is what n and alpha allow."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from imgclf.certification import (
    ABSTAIN,
    certificates,
    lower_confidence_bound,
    max_certifiable_radius,
    predict,
    smooth_adv,
)
from imgclf.runtime import generator

SIGMA = 0.25


class Halfspace(torch.nn.Module):
    """Class 0 where ``w . x > b``, else class 1: under noise ``N(0, sigma^2 I)`` class 0 has probability
    ``Phi((w . x - b) / (sigma |w|))``, so the smoothed classifier's true L2 radius is the distance to the plane."""

    def __init__(self, weight: torch.Tensor, bias: float):
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1) @ self.weight.flatten() - self.bias  # (B,)
        return torch.stack([z, -z], 1)  # (B, 2) logits


def images_at(distances: list[float], weight: torch.Tensor, bias: float) -> torch.Tensor:
    """Images ``(N, 1, 4, 4)`` in ``[0, 1]`` at the given signed L2 distances from the plane ``w . x = b``."""
    unit = weight.flatten() / weight.norm()
    centre = torch.full((16,), 0.5)
    centre = centre - (centre @ weight.flatten() - bias) / weight.norm() * unit  # on the plane
    return torch.stack([centre + d * unit for d in distances]).view(-1, 1, 4, 4).clamp(0, 1)


@pytest.fixture()
def halfspace() -> tuple[Halfspace, torch.Tensor]:
    weight = torch.linspace(-1, 1, 16)
    return Halfspace(weight, 0.1).eval(), weight


def test_a_certified_radius_approaches_the_distance_to_the_plane_and_never_exceeds_it(halfspace):
    model, weight = halfspace
    distances = [0.05, 0.2, 0.4, -0.3]  # top-class probabilities Phi(d / sigma): 0.58, 0.79, 0.95, 0.88 (class 1)
    x = images_at(distances, weight, model.bias)
    result = certificates(model, x, sigma=SIGMA, num_classes=2, n0=100, n=10_000, alpha=0.001, generator=generator(0))
    assert result.prediction.tolist() == [0, 0, 0, 1]
    truth = np.abs(distances)
    p_true = stats.norm.cdf(truth / SIGMA)
    assert (result.p_lower <= p_true).all()  # a lower bound (each fails with probability at most alpha)
    # within five binomial standard deviations of the truth, the sampling noise of 10,000 copies
    assert (result.p_lower >= p_true - 5 * np.sqrt(p_true * (1 - p_true) / 10_000)).all(), result.p_lower
    assert (result.radius <= truth).all() and (result.radius >= truth - 0.06).all(), (result.radius, truth)
    assert result.forwards == 4 * 10_100
    assert result.certified_accuracy(np.array([0, 0, 0, 1]), 0.0) == 1.0
    assert result.certified_accuracy(np.array([0, 0, 0, 1]), 0.25) == 0.5  # the 0.4 and 0.3 examples


def test_the_smoothed_classifier_abstains_on_a_tie(halfspace):
    model, weight = halfspace
    x = images_at([0.0, 0.0, 0.0], weight, model.bias)  # on the plane: both classes have probability 1/2
    assert (predict(model, x, sigma=SIGMA, num_classes=2, n=1_000, generator=generator(1)) == ABSTAIN).all()
    tied = certificates(model, x, sigma=SIGMA, num_classes=2, n0=100, n=1_000, generator=generator(1))
    assert (tied.prediction == ABSTAIN).all() and (tied.radius == 0).all() and tied.abstained == 1.0
    # far from the plane PREDICT answers
    assert predict(model, images_at([0.5], weight, model.bias), sigma=SIGMA, num_classes=2,
                   generator=generator(1)).tolist() == [0]


def test_no_radius_exceeds_what_n_and_alpha_allow_and_the_bound_is_clopper_pearsons():
    constant = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    torch.nn.init.zeros_(constant[1].weight)
    constant[1].bias.data = torch.tensor([1.0, 0.0, 0.0])  # always class 0, whatever the noise
    result = certificates(constant, torch.rand(2, 1, 4, 4), sigma=0.5, num_classes=3, n0=10, n=1_000, alpha=0.01,
                     generator=generator(0))
    cap = max_certifiable_radius(0.5, 1_000, 0.01)
    assert result.radius == pytest.approx([cap, cap]) and cap == pytest.approx(0.5 * stats.norm.ppf(0.01 ** 0.001))
    # the one-sided bound is the beta quantile of the Clopper-Pearson interval
    k = np.array([0, 1, 500, 999, 1_000])
    expected = np.where(k > 0, stats.beta.ppf(0.01, np.maximum(k, 1), 1_000 - k + 1), 0.0)
    assert lower_confidence_bound(k, 1_000, 0.01) == pytest.approx(expected)


def test_certify_is_deterministic_under_its_seed_and_refuses_bad_settings(halfspace):
    model, weight = halfspace
    x = images_at([0.1, 0.2], weight, model.bias)
    first = certificates(model, x, sigma=SIGMA, num_classes=2, n=500, generator=generator(3), batch_size=64)
    again = certificates(model, x, sigma=SIGMA, num_classes=2, n=500, generator=generator(3), batch_size=64)
    assert np.array_equal(first.radius, again.radius)
    for bad, match in [({"sigma": 0.0}, "sigma must be > 0"), ({"alpha": 0.5}, "alpha must be in"),
                       ({"n": 0}, "n must be >= 1")]:
        with pytest.raises(ValueError, match=match):
            certificates(model, x, **{"sigma": SIGMA, "num_classes": 2, **bad})


def test_no_certified_example_is_fooled_within_its_radius_by_the_attack_made_for_the_smoothed_classifier(halfspace):
    model, weight = halfspace
    distances = [0.3, 0.4, 0.5, -0.35]
    x = images_at(distances, weight, model.bias)
    certified = certificates(model, x, sigma=SIGMA, num_classes=2, n=10_000, generator=generator(0))
    labels = torch.as_tensor(certified.prediction)
    assert (certified.prediction >= 0).all() and (certified.radius > 0.25).all()
    inside = smooth_adv(model, x, labels, eps=torch.as_tensor(certified.radius, dtype=torch.float32), sigma=SIGMA,
                        steps=20, generator=generator(1))
    assert ((inside - x).flatten(1).norm(dim=1) <= torch.as_tensor(certified.radius) + 1e-4).all()
    # within its radius the smoothed classifier still answers the certified class, or abstains so close to the
    # plane (PREDICT's answer is wrong with probability at most alpha, the Monte Carlo tolerance)
    answers = predict(model, inside, sigma=SIGMA, num_classes=2, n=1_000, generator=generator(2))
    assert ((answers == certified.prediction) | (answers == ABSTAIN)).all(), answers
    # the attack itself works: 0.2 beyond the true radius (the distance to the plane) it flips every answer
    beyond = smooth_adv(model, x, labels, eps=torch.as_tensor(np.abs(distances), dtype=torch.float32) + 0.2,
                        sigma=SIGMA, steps=20, generator=generator(1))
    flipped = predict(model, beyond, sigma=SIGMA, num_classes=2, n=1_000, generator=generator(2))
    assert (flipped == 1 - certified.prediction).all(), flipped
    with pytest.raises(ValueError, match="sigma must be > 0"):
        smooth_adv(model, x, labels, eps=0.1, sigma=0.0)


def test_the_bracket_holds_the_true_robust_accuracy_of_a_smoothed_linear_classifier(halfspace):
    """For a half-space the smoothed classifier's true robust accuracy at radius r is the share of examples at
    least r from the plane on the right side: the certified accuracy must lie at or below it, SmoothAdv's at or
    above it (up to the Monte Carlo error of its majority vote), and no certified example is fooled."""
    from imgclf.certification import certify

    model, weight = halfspace
    distances = [0.05, 0.15, 0.3, 0.45, 0.6, -0.2, -0.4, -0.55]
    x = images_at(distances, weight, model.bias)
    labels = torch.as_tensor([0, 0, 0, 0, 0, 1, 1, 1])
    result = certify(model, x, labels, sigma=SIGMA, radii=[0, 0.1, 0.25, 0.5], n=10_000, attack_steps=40,
                     attack_n=2_000, seed=0)
    for row in result.rows:
        true = float((np.abs(distances) > row.radius).mean())
        assert row.certified <= true <= row.smoothed_attack + 1e-9, (row, true)
        assert row.smoothed_attack <= true + 1 / len(distances)  # SmoothAdv finds the plane (one may sit on it)
    assert result.violations == 0 and result.abstained == 0.0
    assert result.rows[-1].certified == pytest.approx(2 / 8)  # the 0.6 and -0.55 examples
