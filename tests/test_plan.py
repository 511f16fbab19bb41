"""The converging attack plan: its stopping rule on constructed counts, and on real models: an honest one
converges with a worst case no weaker than the attacks it escalates from, one whose gradients are masked is
never called converged."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import torch

from conftest import Rounding
from imgclf.attacks import AttackSpec, plan_specs, robustness
from imgclf.attacks.checks import advice
from imgclf.attacks.plan import decide
from imgclf.attacks.results import WORST_CASE, PlanStepOutcome
from imgclf.attacks.robust_accuracy import unit_seed
from test_attacks import CPU, mnist  # noqa: F401  (the fixture)

BOTH = frozenset({True, False})
#: The plan's kinds of step, shortened for tests on the CPU: the real plan's budgets take minutes per hundred
#: examples on a masked model (whose gradient attacks never stop early).
SHORT = [AttackSpec("apgd-ce", steps=20), AttackSpec("apgd-dlr", steps=20),
         AttackSpec("square", options={"queries": 300}, tag="300 queries"), AttackSpec("apgd-t", steps=20,
                                                                                      target_classes=3)]


def step(attack: str, white_box: bool, attacked: int, fooled: int, passes: int = 0) -> PlanStepOutcome:
    return PlanStepOutcome(attack, white_box, attacked, fooled, passes, 0)


def test_the_plan_stops_when_the_latest_escalation_of_each_kind_fooled_at_most_the_tolerance():
    base = step("apgd-ce", True, 500, 200)
    # the base attack alone is no evidence: nothing has escalated on it yet
    assert not decide([base], kinds=BOTH, tolerance=0.01, spent=200, budget=8800, remaining=5).stop
    white = step("apgd-dlr", True, 300, 3)  # 1% of 300: at the tolerance
    decision = decide([base, white], kinds=BOTH, tolerance=0.01, spent=400, budget=8800, remaining=4)
    assert not decision.stop and "no black-box escalation has run" in decision.reason
    black = step("square", False, 297, 2)
    decision = decide([base, white, black], kinds=BOTH, tolerance=0.01, spent=1400, budget=8800, remaining=3)
    assert decision.stop and decision.converged
    assert decision.reason == ("converged: the last escalations fooled 3 of 300 (apgd-dlr, white-box) and 2 of 297 "
                               "(square, black-box) of the examples still standing, within the tolerance of 1.00%")
    # one more fooled by the black-box step: above the tolerance, so the plan escalates
    loud = step("square", False, 297, 4)
    decision = decide([base, white, loud], kinds=BOTH, tolerance=0.01, spent=1400, budget=8800, remaining=3)
    assert not decision.stop and decision.reason.startswith("square still fooled 4 of the 297 examples standing")
    # a quiet white-box step after a loud black-box one is not enough: black box must be quiet again
    later = step("apgd-t", True, 293, 0)
    assert not decide([base, white, loud, later], kinds=BOTH, tolerance=0.01, spent=3200, budget=8800,
                      remaining=2).stop


def test_the_plan_stops_unconverged_at_the_budget_or_its_last_step_and_converged_when_nothing_stands():
    steps = [step("apgd-ce", True, 500, 100), step("apgd-dlr", True, 400, 40), step("square", False, 360, 30)]
    spent = decide(steps, kinds=BOTH, tolerance=0.005, spent=9000, budget=8800, remaining=3)
    assert spent.stop and not spent.converged and "within AutoAttack's budget (8,800 passes" in spent.reason
    last = decide(steps, kinds=BOTH, tolerance=0.005, spent=2000, budget=8800, remaining=0)
    assert last.stop and not last.converged and last.reason.startswith("did not converge: the plan ran every step")
    gone = decide(steps + [step("apgd-t", True, 330, 330)], kinds=BOTH, tolerance=0.005, spent=3000, budget=8800,
                  remaining=2)
    assert gone.stop and gone.converged and gone.reason == "no example is left standing after apgd-t"
    # a model without gradients (ONNX): black-box evidence alone decides
    black_only = [step("square", False, 500, 300), step("square (5000 queries)", False, 200, 1)]
    assert decide(black_only, kinds=frozenset({False}), tolerance=0.005, spent=6000, budget=8800,
                  remaining=0).converged


def test_the_plan_has_a_black_box_step_under_linf_only_and_names_each_step_apart():
    linf = [spec.label for spec in plan_specs("linf")]
    assert linf == ["apgd-ce", "apgd-dlr", "apgd-dlr (5 restarts near the boundary)", "square (1000 queries)",
                    "apgd-t (3 targets)", "square (5000 queries, focus 1/8)",
                    "square (5000 queries, focus 1/8, new draw)", "apgd-t (9 targets)", "fab-t"]
    # the long search, then the same search with fresh random numbers: whether a new draw finds more
    assert [(spec.options.get("queries"), spec.options.get("focus", 1.0), spec.draw) for spec in plan_specs("linf")
            if spec.name == "square"] == [(1000, 1.0, 0), (5000, 0.125, 0), (5000, 0.125, 1)]
    assert [(s.target_classes, s.restarts) for s in plan_specs("linf") if s.name == "apgd-t"] == [(3, 1), (9, 1)]
    near = [spec for spec in plan_specs("linf") if spec.near is not None]
    assert [(s.name, s.restarts, s.near) for s in near] == [("apgd-dlr", 5, 1.25)]
    assert [spec.label for spec in plan_specs("l2")] == [
        "apgd-ce", "apgd-dlr", "apgd-dlr (5 restarts near the boundary)", "apgd-t (3 targets)", "apgd-t (9 targets)",
        "fab-t"]
    with pytest.raises(ValueError, match="near must be at least 1"):
        AttackSpec("apgd-dlr", near=0.5)
    with pytest.raises(ValueError, match="draw must be at least 0"):
        AttackSpec("square", draw=-1)


def test_a_new_draw_repeats_a_search_with_fresh_random_numbers_and_draw_0_keeps_the_seed():
    assert unit_seed(7, 0) == 7 and unit_seed(7, 0, 0) == 7  # draw 0: the seeds every evaluation has used
    earlier = int(np.random.SeedSequence([7, 3]).generate_state(1, dtype=np.uint64)[0] % 2**63)
    assert unit_seed(7, 3) == unit_seed(7, 3, 0) == earlier != unit_seed(7, 3, 1)
    assert len({unit_seed(7, batch, draw) for batch in range(3) for draw in range(3)}) == 9
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 4)).eval()
    x, y = torch.rand(24, 1, 6, 6), torch.randint(0, 4, (24,))

    def fooled(draw: int) -> np.ndarray:
        spec = AttackSpec("square", options={"queries": 30}, tag=f"draw {draw}", draw=draw)
        result = robustness(net, x, y, attacks=[spec], eps_values=[0.03], device=CPU, seed=0, run_checks=False)
        return result.fooled[(spec.label, 0.03)]

    assert (fooled(1) == fooled(1)).all()  # deterministic under the seed
    draws = [fooled(draw) for draw in range(4)]
    assert any((draws[0] != other).any() for other in draws[1:])  # each draw searches with its own squares


@pytest.mark.slow
def test_the_near_boundary_step_retries_only_the_examples_the_minimal_norm_search_found_close(mnist):  # noqa: F811
    net, x, y = mnist
    x, y = x[:100], y[:100]
    eps = 0.1
    steps = [AttackSpec("apgd-ce", steps=10), AttackSpec("apgd-dlr", steps=10, restarts=2, near=1.25, tag="near")]
    fmn = AttackSpec("fmn", steps=30)
    result = robustness(net, x, y, attacks=[], eps_values=[eps], device=CPU, seed=0, plan=steps, tolerance=0.0,
                        minimal_norm=fmn, run_checks=False)
    radii = result.examples["minimal_radii"]
    standing = (radii > 0) & ~result.fooled[("apgd-ce", eps)]
    close = standing & (radii <= 1.25 * eps)
    assert 0 < close.sum() < standing.sum()  # the case tells something: some standing examples are far out
    (outcome,) = result.plan
    assert [s.attack for s in outcome.steps] == ["apgd-ce", "apgd-dlr (near)"]
    assert outcome.steps[1].attacked == close.sum()
    assert not (result.fooled[("apgd-dlr (near)", eps)] & ~close).any()  # it touched no example further out
    # without the minimal-norm search there are no radii: the step is skipped, with why
    bare = robustness(net, x, y, attacks=[], eps_values=[eps], device=CPU, seed=0, plan=steps, tolerance=0.0,
                      run_checks=False)
    assert [s.attack for s in bare.plan[0].steps] == ["apgd-ce"]
    assert bare.skipped == ["apgd-dlr (near) skipped: it attacks the examples the minimal-norm search found close to "
                            "the boundary, and that search did not run"]


@pytest.mark.slow
def test_the_plan_converges_on_an_honest_model_below_the_attacks_it_starts_from(mnist):  # noqa: F811
    net, x, y = mnist
    x, y = x[:100], y[:100]
    quick = [AttackSpec("fgsm"), AttackSpec("pgd")]
    result = robustness(net, x, y, attacks=quick, eps_values=[0, 0.1], device=CPU, seed=0, plan=SHORT, tolerance=0.05)
    (outcome,) = result.plan  # none at eps 0
    assert outcome.converged and outcome.reason.startswith("converged: the last escalations fooled"), outcome
    rows = {row.attack: row for row in result.entries if row.eps == 0.1}
    steps = [s.attack for s in outcome.steps]
    assert steps[0] == "apgd-ce" and set(steps) <= set(rows)
    # each step's row is the robust accuracy after it and everything before: it never rises
    cumulative = [rows[name].accuracy for name in steps]
    assert cumulative == sorted(cumulative, reverse=True)
    assert rows[WORST_CASE].accuracy == cumulative[-1] <= min(rows["fgsm"].accuracy, rows["pgd"].accuracy)
    # every step ran on exactly the examples still standing, and its passes are counted
    standing = round(min(rows["fgsm"].accuracy, rows["pgd"].accuracy) * 100)
    assert outcome.steps[0].attacked <= standing and all(s.forwards > 0 for s in outcome.steps)
    for before, after in itertools.pairwise(outcome.steps):
        assert after.attacked == before.attacked - before.fooled
    assert outcome.passes_per_example == pytest.approx(
        sum(s.forwards + s.backwards for s in outcome.steps) / round(result.clean_accuracy * 100))
    statuses = {check["name"]: check["status"] for check in result.checks}
    assert "failed" not in statuses.values(), result.checks
    assert advice(result.checks, result.plan) == []
    black = next(c for c in result.checks if c["name"] == "white-box beats black-box")["detail"]
    assert re.match(r"(the black-box search fooled no example the white-box attacks had missed|the \d+ example\(s\) "
                    r"the black-box search fooled all fall to a white-box attack run again on them); square probe",
                    black), black


@pytest.mark.slow
def test_a_model_with_masked_gradients_is_never_called_converged(mnist):  # noqa: F811
    net, x, y = mnist
    x, y = x[:40], y[:40]
    result = robustness(Rounding(net).eval(), x, y, attacks=[], eps_values=[0.1], device=CPU, seed=0, plan=SHORT,
                        tolerance=0.05)
    (outcome,) = result.plan
    assert all(s.fooled == 0 for s in outcome.steps if s.white_box)  # every gradient attack is stopped by the rounding
    # the plan's own rule is satisfied (nothing more found), but the gradients check voids the white-box silence
    assert not outcome.converged and outcome.reason.startswith("did not converge: the last escalations fooled")
    assert "the check gradients failed" in outcome.reason or "the checks gradients" in outcome.reason, outcome.reason
    notes = advice(result.checks, result.plan, run="runs/rounded")
    assert notes and "--surrogate" in notes[0] and "imgclf attack runs/rounded" in notes[0]


class StraightThrough(Rounding):
    """The same quantization with the identity's gradient through it (a straight-through estimator)."""

    def forward(self, x):
        return self.inner(x + (torch.round(x * 4) / 4 - x).detach())


def test_what_the_plans_search_fools_is_attacked_again_by_every_gradient_attack_before_it_counts_as_beating_them():
    torch.manual_seed(0)
    model = Rounding(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))).eval()  # 4x4 images, 3 classes
    images = torch.rand(80, 1, 4, 4)
    labels = model(images).argmax(1)
    result = robustness(model, images, labels, attacks=[], eps_values=[0.3], device=CPU, seed=0, plan=SHORT)
    (outcome,) = result.plan
    fooled = sum(s.fooled for s in outcome.steps if not s.white_box)
    black = next(c for c in result.checks if c["name"] == "white-box beats black-box")
    # the gradient attacks after the search (APGD-T) never saw what it fooled; run again on it, they all fail
    assert fooled > 0 and black["status"] == "failed", (outcome, black)
    beaten = re.match(r"the black-box search fooled examples that every white-box attack, run again on them, "
                      rf"failed on: eps=0.3: (\d+) of the {fooled} it fooled; square probe", black["detail"])
    assert beaten and int(beaten[1]) >= 0.9 * fooled, black["detail"]  # (a random start may land one)
    assert not outcome.converged
    # the same quantization with gradients through it, Square first: run again on what it fooled, APGD-CE finds it
    honest = StraightThrough(model.inner).eval()
    again = robustness(honest, images, labels, attacks=[], eps_values=[0.3], device=CPU, seed=0,
                       plan=[SHORT[2], SHORT[0]])
    black = next(c for c in again.checks if c["name"] == "white-box beats black-box")
    assert re.match(r"the \d+ example\(s\) the black-box search fooled all fall to a white-box attack run again",
                    black["detail"]), black["detail"]


def test_the_advice_fits_the_kind_of_escalation_still_finding_examples():
    from imgclf.attacks.results import PlanOutcome

    steps = [step("apgd-ce", True, 900, 20), step("apgd-dlr", True, 880, 5), step("square", False, 875, 24),
             step("apgd-t", True, 851, 0)]
    black = advice([], [PlanOutcome(0.3, False, "did not converge", 0.005, 9000, 8800, steps)], run="runs/r")
    # the black-box step is still finding examples, the latest gradient step is not: transfer and a longer search
    assert len(black) == 1 and "--surrogate" in black[0] and "imgclf attack runs/r --attack square" in black[0]
    white = steps[:3] + [step("apgd-t", True, 851, 9), step("square (5000 queries)", False, 842, 0)]
    notes = advice([], [PlanOutcome(0.3, False, "did not converge", 0.005, 9000, 8800, white)], run="runs/r")
    assert len(notes) == 1 and "imgclf attack runs/r --preset full --restarts 5 --cascade" in notes[0]
    assert advice([], [PlanOutcome(0.3, True, "converged", 0.005, 900, 8800, white)]) == []


def test_the_advice_sends_an_evaluation_of_weak_attacks_to_the_plan_before_blaming_the_gradients():
    beaten = [{"name": "white-box beats black-box", "status": "failed", "detail": "square probe fools 2"}]
    notes = advice(beaten, [], run="runs/r", attacks=["fgsm", "pgd", "worst-case"])
    # FGSM and PGD-20 alone: a probe that beats them says they stopped short; the remedy is the plan
    assert len(notes) == 1 and "imgclf attack runs/r --preset auto" in notes[0] and "(fgsm, pgd)" in notes[0]
    assert "--surrogate" not in notes[0]
    python = advice(beaten, [], python=True, attacks=["pgd"])
    assert len(python) == 1 and 'attacks=["auto"]' in python[0]
    # the whole ensemble (or the plan) ran: the same failure points to masked gradients
    ensemble = advice(beaten, [], run="runs/r", attacks=["apgd-ce", "apgd-t", "fab-t", "square", "worst-case"])
    assert len(ensemble) == 1 and "--surrogate" in ensemble[0] and "--preset auto" not in ensemble[0]
    # a check that says the gradients themselves are broken is not a matter of weak attacks
    zero = [{"name": "gradients", "status": "failed", "detail": "zero"}]
    assert "--surrogate" in advice(zero, [], attacks=["fgsm"])[0]
