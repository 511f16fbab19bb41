"""The minimal-norm attack (FMN), the L1 ball, the robustness curve and its agreement with the fixed-eps attacks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from imgclf.attacks import AttackSpec, fmn, robustness
from imgclf.attacks.core import per_example_norm, project_l1_ball
from imgclf.attacks.minimal_norm import minimal_radii
from imgclf.attacks.results import WORST_CASE, agreement, curve_accuracy
from imgclf.config import config_from_dict
from imgclf.errors import UsageError
from imgclf.settings import resolve


class Linear(torch.nn.Module):
    """Two logits, ``(w . x + b, 0)``: class 0 holds while ``w . x + b > 0``. Its smallest adversarial perturbation
    under a norm is ``(w . x + b) / ||w||_dual`` (while the box [0, 1] does not bind)."""

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.w, self.b = w.flatten(), b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x.flatten(1) @ self.w + self.b
        return torch.stack([score, torch.zeros_like(score)], 1)


def _linear_case() -> tuple[Linear, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(1, 6, 6, generator=gen)
    images = torch.full((5, 1, 6, 6), 0.5) + 0.02 * torch.randn(5, 1, 6, 6, generator=gen)
    model = Linear(w, 0.0).eval()
    score = images.flatten(1) @ model.w
    model.b = float(-score.min() + 0.3)  # every example classified as 0, margins from 0.3 up
    margins = images.flatten(1) @ model.w + model.b
    flat = model.w
    expected = {"linf": margins / flat.abs().sum(), "l2": margins / flat.norm(), "l1": margins / flat.abs().max()}
    return model, images, torch.zeros(5, dtype=torch.long), expected


def test_the_l1_projection_is_the_closest_point_of_the_ball():
    gen = torch.Generator().manual_seed(1)
    delta = torch.randn(6, 3, 4, 4, generator=gen)
    radius = torch.tensor([0.5, 1.0, 2.0, 100.0, 0.0, 5.0]).view(-1, 1, 1, 1)
    projected = project_l1_ball(delta, radius)
    norms = per_example_norm(projected, "l1").flatten()
    assert (norms <= radius.flatten() + 1e-4).all()
    assert torch.equal(projected[3], delta[3])  # inside: unchanged
    assert projected[4].abs().max() == 0
    for row in (0, 1, 2, 5):  # no other point of the ball is closer
        others = torch.randn(200, 48, generator=gen)
        others = others / others.abs().sum(1, keepdim=True) * radius.flatten()[row] * torch.rand(200, 1, generator=gen)
        distance = (delta[row].flatten() - projected[row].flatten()).norm()
        assert distance <= (delta[row].flatten() - others).norm(dim=1).min() + 1e-5


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_fmn_finds_the_smallest_perturbation_of_a_linear_model(norm):
    model, images, labels, expected = _linear_case()
    adversarial = fmn(model, images, labels, eps={"linf": 1.0, "l2": 6.0, "l1": 36.0}[norm], norm=norm, steps=200)
    assert (model(adversarial).argmax(1) != labels).all()
    found = per_example_norm(adversarial - images, norm).flatten()
    assert torch.allclose(found, expected[norm], rtol=0.03), (found, expected[norm])
    assert torch.allclose(minimal_radii(model, adversarial, images, labels, norm), found)
    assert (minimal_radii(model, images, images, torch.ones(5).long(), norm) == 0).all()  # wrong already
    assert minimal_radii(model, images, images, labels, norm).isinf().all()  # the clean image fools nothing


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_fmn_at_a_fixed_eps_stays_in_the_ball_and_fools_only_what_it_can(norm):
    model, images, labels, expected = _linear_case()
    eps = float(expected[norm].median())
    adversarial = fmn(model, images, labels, eps=eps, norm=norm, steps=200)
    sizes = per_example_norm(adversarial - images, norm).flatten()
    assert (sizes <= eps * (1 + 1e-5)).all() and adversarial.min() >= 0 and adversarial.max() <= 1
    fooled = model(adversarial).argmax(1) != labels
    assert not fooled[expected[norm] > eps * 1.001].any()  # farther than eps: no perturbation within eps exists
    assert fooled[expected[norm] < eps * 0.97].all()


def test_the_curve_and_its_agreement_with_the_fixed_eps_worst_case():
    radii = np.array([0.0, 0.05, 0.15, 0.25, np.inf, 0.08], dtype=np.float32)
    correct = np.array([False, True, True, True, True, True])
    assert curve_accuracy(radii, 0.1) == pytest.approx(3 / 6)
    fixed = {0.0: np.zeros(6, bool), 0.1: np.array([False, True, True, False, False, False]),
             0.2: np.array([False, True, True, False, True, True])}
    rows = agreement(radii, fixed, correct)
    assert [row.eps for row in rows] == [0.1, 0.2]
    first, second = rows
    assert (first.only_fixed, first.only_minimal) == (1, 1)  # example 2 (fixed only), example 5 (FMN only)
    assert first.fixed_accuracy == pytest.approx(3 / 6) and first.curve_accuracy == pytest.approx(3 / 6)
    assert not first.missed and first.p_value == pytest.approx(0.75)
    assert first.combined_accuracy == pytest.approx(2 / 6)  # examples 3 and 4 resist both
    assert (second.only_fixed, second.only_minimal) == (1, 0)  # example 4: the curve never found it
    assert second.p_value == pytest.approx(0.5) and not second.missed
    many = agreement(np.full(40, np.inf, dtype=np.float32), {0.1: np.ones(40, bool)}, np.ones(40, bool))
    assert many[0].missed and many[0].p_value < 1e-6


def test_an_evaluation_gives_each_example_its_radius_and_resumes_to_the_same_numbers():
    model, images, labels, expected = _linear_case()
    images, labels = torch.cat([images, torch.full((1, 1, 6, 6), 0.5)]), torch.cat([labels, torch.ones(1).long()])
    expected_l2 = expected["l2"]

    class Store(dict):
        def load(self, name):
            return self.get(name)

        def save(self, name, unit):
            self[name] = unit

    store = Store()
    first = robustness(model, images, labels, attacks=[AttackSpec("pgd", norm="l2")], eps_values=[0, 0.5],
                       device=torch.device("cpu"), batch_size=4, run_checks=False, store=store,
                       minimal_norm=AttackSpec("fmn", norm="l2", steps=200))
    radii = first.examples["minimal_radii"]
    assert radii[5] == 0.0  # misclassified: its smallest perturbation is none
    assert np.allclose(radii[:5], expected_l2.numpy(), rtol=0.03)
    summary = first.minimal_norm
    assert summary is not None and (summary.attacked, summary.found) == (5, 5)
    assert summary.median == pytest.approx(float(np.median(radii[:5])))
    assert [row.eps for row in summary.agreement] == [0.5]
    assert any(name.startswith("minimal-") for name in store)
    again = robustness(model, images, labels, attacks=[AttackSpec("pgd", norm="l2")], eps_values=[0, 0.5],
                       device=torch.device("cpu"), batch_size=4, run_checks=False, store=store,
                       minimal_norm=AttackSpec("fmn", norm="l2", steps=200))
    assert np.array_equal(again.examples["minimal_radii"], radii)
    worst = next(e for e in again.entries if e.attack == WORST_CASE and e.eps == 0.5)
    assert summary.agreement[0].combined_accuracy == pytest.approx(worst.accuracy)


def test_what_the_minimal_norm_search_finds_within_eps_counts_in_the_worst_case():
    model, images, labels, expected = _linear_case()
    eps = float(expected["l2"].median())  # FMN's radii put about half the examples within eps
    weak = AttackSpec("pgd", norm="l2", steps=1, alpha=1e-4, random_start=False)  # fools nothing
    result = robustness(model, images, labels, attacks=[weak], eps_values=[0, eps], device=torch.device("cpu"),
                        batch_size=4, run_checks=False, minimal_norm=AttackSpec("fmn", norm="l2", steps=200))
    radii = result.examples["minimal_radii"]
    within = radii <= eps
    assert 0 < within.sum() < 5 and not result.fooled[("pgd", eps)].any()
    worst = next(e for e in result.entries if e.attack == WORST_CASE and e.eps == eps)
    row = result.minimal_norm.agreement[0]
    assert (row.fixed_accuracy, row.only_minimal) == (1.0, int(within.sum()))  # the agreement is the attacks' own
    assert worst.accuracy == pytest.approx(row.combined_accuracy) == pytest.approx(1 - within.mean())
    assert np.array_equal(result.fooled[(WORST_CASE, eps)], within)
    record = result.adversarial
    assert record["attacks"] == ["pgd", "fmn"]
    fooled, fooled_by, adv = record["fooled"][1], record["fooled_by"][1], record["images"][1]
    assert torch.equal(fooled, torch.from_numpy(within)) and (fooled_by[fooled] == 1).all()
    assert (fooled_by[~fooled] == -1).all() and not record["fooled"][0].any()  # nothing at eps 0
    assert (per_example_norm(adv - images, "l2").flatten()[fooled] <= eps + 1e-6).all()
    logits = model(adv[fooled])
    assert (logits[:, 0] - logits[:, 1] <= 1e-5).all()  # on the boundary or past it (FMN stops at the boundary)
    assert any("count in the worst case" in note for note in result.minimal_norm.warnings)


def test_l1_is_a_threat_model_with_its_own_eps_and_the_plan_of_fmn():
    settings = resolve(config_from_dict({"attack": {"norm": "l1"}}), channels=1)
    assert settings.eps_values == [0, 2.5, 5, 10]
    assert settings.attacks == ()  # FGSM and PGD of the default preset have no L1 version
    assert [spec.label for spec in settings.plan] == ["fmn", "fmn (1000 steps)"]
    assert settings.minimal_norm is not None and settings.minimal_norm.norm == "l1"
    with pytest.raises(UsageError, match="no attack of quick implements norm l1; name one that does: fmn"):
        resolve(config_from_dict({"attack": {"norm": "l1", "attacks": ["quick"]}}), channels=1)
    with pytest.raises(UsageError, match="the pgd attack is implemented for --norm linf, l2 only; drop it or use linf"):
        resolve(config_from_dict({"attack": {"norm": "l1", "attacks": ["pgd"]}}), channels=1)
    with pytest.raises(UsageError, match="adversarial training trains under linf or l2; attack.norm is l1"):
        resolve(config_from_dict({"attack": {"norm": "l1", "eps": ["0", "10"]}, "adversarial": {"recipe": "pgd"}}),
                channels=1)
    off = resolve(config_from_dict({"attack": {"minimal_norm": False}}), channels=3)
    assert off.minimal_norm is None and math.isclose(off.eps_values[-1], 8 / 255)


def test_an_l1_evaluation_runs_the_plan_of_fmn_with_the_checks_that_apply(copy):
    from imgclf.cli import main
    from imgclf.record import read_metrics

    assert main(["attack", str(copy), "--norm", "l1", "--preset", "auto", "--eps", "0,1,3", "--n-examples", "40",
                 "--quiet"]) == 0
    evaluation = read_metrics(copy).evaluations[-1]
    attack = evaluation.attack
    assert attack.norm == "l1" and attack.attacks == ["fmn", "fmn (1000 steps)"]
    assert {row.norm for row in evaluation.robustness} == {"l1"}
    assert [outcome.eps for outcome in attack.plan] == [1.0, 3.0]
    status = {check["name"]: check["status"] for check in attack.checks}
    assert status["pgd beats fgsm"] == "not run" and status["white-box beats black-box"] == "not run"
    assert status["large eps breaks the model"] == "passed" and status["attack converged"] in ("passed", "failed")
    assert attack.minimal_norm is not None and attack.minimal_norm.norm == "l1"
    worst = {row.eps: row.accuracy for row in evaluation.worst_case()}
    assert worst[0.0] >= worst[1.0] >= worst[3.0]
    assert "L1 attacks in pixel space" in (copy / "report.html").read_text()
