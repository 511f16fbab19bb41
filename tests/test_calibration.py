"""Calibration: ECE, MCE, NLL and Brier score against hand computations and torchmetrics, temperature
scaling, and calibration under attack."""

import math

import numpy as np
import pytest
import torch

from imgclf.calibration import calibrate, calibration_metrics, calibration_under_attack, fit_temperature


def _two_class_logits(confidence: np.ndarray) -> torch.Tensor:
    """Logits whose softmax gives class 0 the probability ``confidence``."""
    p = torch.as_tensor(confidence, dtype=torch.float64)
    return torch.stack([p.log(), (1 - p).log()], dim=1)


def test_a_perfectly_calibrated_predictor_has_an_ece_near_zero():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, 200_000)
    labels = np.where(rng.uniform(size=confidence.size) < confidence, 0, 1)  # right with probability p
    metrics = calibration_metrics(_two_class_logits(confidence), labels)
    assert metrics.ece < 0.005 and metrics.n == 200_000
    assert abs(metrics.accuracy - metrics.confidence) < 0.005


def test_a_known_miscalibrated_predictor_matches_a_hand_computation():
    # confidences 0.95, 0.95 (one right, one wrong) and 0.65, 0.65 (both right), five bins of width 0.2:
    # [0.8, 1): accuracy 0.5, confidence 0.95, gap 0.45; [0.6, 0.8): accuracy 1, confidence 0.65, gap 0.35.
    logits = _two_class_logits(np.array([0.95, 0.95, 0.65, 0.65]))
    metrics = calibration_metrics(logits, np.array([0, 1, 0, 0]), bins=5)
    assert metrics.ece == pytest.approx(0.5 * 0.45 + 0.5 * 0.35)
    assert metrics.mce == pytest.approx(0.45)
    assert metrics.nll == pytest.approx(-(math.log(0.95) + math.log(0.05) + 2 * math.log(0.65)) / 4)
    assert metrics.brier == pytest.approx((2 * 0.05 ** 2 + 2 * 0.95 ** 2 + 4 * 0.35 ** 2) / 4)
    assert [b.count for b in metrics.bins] == [0, 0, 0, 2, 2]
    assert metrics.bins[4].accuracy == 0.5 and metrics.bins[0].accuracy is None


def test_ece_and_mce_match_torchmetrics():
    classification = pytest.importorskip("torchmetrics.functional.classification")
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3000, 10, generator=g) * 3
    labels = torch.randint(0, 10, (3000,), generator=g)
    labels[:1500] = logits[:1500].argmax(1)
    for bins in (15, 7):
        ours = calibration_metrics(logits, labels, bins=bins)
        for norm, value in (("l1", ours.ece), ("max", ours.mce)):
            theirs = classification.multiclass_calibration_error(logits.softmax(1), labels, 10, n_bins=bins,
                                                                 norm=norm)
            assert value == pytest.approx(float(theirs), abs=1e-5)


def test_temperature_scaling_lowers_the_nll_and_keeps_every_prediction():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4000, 5, generator=g)
    labels = torch.distributions.Categorical(logits=logits).sample()  # calibrated at T = 1 ...
    overconfident = logits * 3  # ... so these need T = 3
    temperature = fit_temperature(overconfident[:2000], labels[:2000])
    assert temperature == pytest.approx(3, rel=0.1)
    result = calibrate(overconfident[2000:], labels[2000:], overconfident[:2000], labels[:2000])
    assert result.val_nll_scaled < result.val_nll
    assert result.test_scaled.nll < result.test.nll and result.test_scaled.ece < result.test.ece
    assert result.test_scaled.accuracy == result.test.accuracy  # scaling changes no argmax


@pytest.mark.parametrize(("logits", "labels", "kwargs", "message"), [
    (torch.zeros(3, 2), torch.zeros(4, dtype=torch.long), {}, "logits must be"),
    (torch.full((2, 2), float("nan")), torch.zeros(2, dtype=torch.long), {}, "NaN"),
    (torch.zeros(2, 2), torch.tensor([0, 2]), {}, r"labels must lie in \[0, 2\)"),
    (torch.zeros(2, 2), torch.tensor([0, 1]), {"bins": 0}, "bins must be at least 1"),
    (torch.zeros(2, 2), torch.tensor([0, 1]), {"temperature": 0.0}, "temperature must be a positive"),
])
def test_bad_inputs_are_refused(logits, labels, kwargs, message):
    with pytest.raises(ValueError, match=message):
        calibration_metrics(logits, labels, **kwargs)


def test_calibration_under_attack_is_that_of_each_eps_images():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    images = torch.rand(2, 6, 1, 2, 2)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    found = calibration_under_attack(model, images, [0.0, 0.1], labels, bins=4, batch_size=4)
    assert [f.eps for f in found] == [0.0, 0.1]
    with torch.no_grad():
        assert found[1].metrics == calibration_metrics(model(images[1]), labels, bins=4)
    with pytest.raises(ValueError, match="images must be"):
        calibration_under_attack(model, images, [0.0], labels)
