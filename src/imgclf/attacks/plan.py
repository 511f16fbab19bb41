"""When the converging attack plan stops: the rule, on counts alone (no torch).

The plan (:data:`imgclf.attacks.registry.AUTO_PLAN`) runs APGD-CE on every correctly classified example, then
escalates on the examples still standing: each step is another kind of search, and whatever it fools counts
in the worst case. An escalation that fools (almost) nothing is evidence that the worst case has converged;
one kind of evidence is not enough, because a model whose gradients are masked (rounded inputs, a saturated
softmax) stops every gradient attack alike. So the plan has converged when the latest *white-box* escalation
and the latest *black-box* escalation (a random search on the logits alone) each fooled at most
``tolerance`` of the examples they attacked (the kinds the model allows: no white box without gradients, no
black box where the norm has none). It stops there; it also stops, unconverged, when its steps run out or
it has spent the budget of AutoAttack's standard version (:data:`imgclf.attacks.registry.AUTOATTACK_PASSES`).

After Croce and Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks" (ICML 2020), whose ensemble this plan orders and stops, and Carlini et al., "On
Evaluating Adversarial Robustness" (2019), for the black-box probe of gradient masking.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from imgclf.attacks.results import PlanOutcome, PlanStepOutcome


@dataclass(frozen=True)
class Decision:
    """What :func:`decide` concludes after a step.

    Attributes:
        stop: Run no further step at this eps.
        converged: The worst case is believed (meaningful when ``stop``).
        reason: One sentence for the report: why it is believed, or why not.
    """

    stop: bool
    converged: bool
    reason: str


def decide(steps: list[PlanStepOutcome], *, kinds: frozenset[bool], tolerance: float, spent: float,
           budget: float, remaining: int) -> Decision:
    """Whether the plan stops after ``steps``, and why.

    Args:
        steps: The steps run so far at this eps, in order; the first is the base attack, not an escalation.
        kinds: The kinds of evidence the plan can gather on this model: ``True`` for white box (gradients),
            ``False`` for black box.
        tolerance: The fraction (``[0, 1)``) of the examples still standing an escalation may fool and count
            as finding nothing more.
        spent: Passes of the model spent so far per correctly classified example.
        budget: The most it may spend per example.
        remaining: Steps of the plan not yet run that the model allows.

    Returns:
        A :class:`Decision`.
    """
    if not steps:
        return Decision(False, False, "nothing run yet")
    last = steps[-1]
    if last.attacked == last.fooled:
        return Decision(True, True, f"no example is left standing after {last.attack}")
    latest = {kind: next((step for step in reversed(steps[1:]) if step.white_box == kind), None) for kind in kinds}
    quiet = {kind: step is not None and step.fooled <= tolerance * step.attacked for kind, step in latest.items()}
    if kinds and all(quiet.values()):
        evidence = " and ".join(f"{step.fooled} of {step.attacked} ({step.attack}, {_kind(kind)})"
                                for kind, step in sorted(latest.items(), reverse=True) if step is not None)
        return Decision(True, True, f"converged: the last escalations fooled {evidence} of the examples still "
                                    f"standing, within the tolerance of {tolerance:.2%}")
    loud = [step for kind, step in latest.items() if step is not None and not quiet[kind]]
    missing = [_kind(kind) for kind, step in latest.items() if step is None]
    still = (f"{loud[-1].attack} still fooled {loud[-1].fooled} of the {loud[-1].attacked} examples standing "
             f"(tolerance {tolerance:.2%})" if loud else f"no {' or '.join(missing)} escalation has run")
    if spent >= budget:
        return Decision(True, False, f"did not converge within AutoAttack's budget ({budget:,.0f} passes per "
                                     f"example, {spent:,.0f} spent): {still}")
    if remaining == 0:
        return Decision(True, False, f"did not converge: the plan ran every step, and {still}")
    return Decision(False, False, still)


#: The sanity checks whose failure voids the white-box steps' silence: the gradients are zero, useless or beaten
#: by a search that does without them.
GRADIENT_CHECKS = ("gradients", "large eps breaks the model", "transfer beats the evaluation",
                   "white-box beats black-box")


def with_checks(outcomes: list[PlanOutcome], checks: list[dict[str, Any]]) -> list[PlanOutcome]:
    """The plan's outcomes with the sanity checks taken into account: a plan that stopped as converged while an
    example still stood is not converged after all where a check of :data:`GRADIENT_CHECKS` failed (its
    gradient steps found nothing because the gradients mislead, not because nothing is left to find); a plan
    that left no example standing stays converged (a robust accuracy of 0 cannot be lowered)."""
    failed = [check["name"] for check in checks if check["status"] == "failed" and check["name"] in GRADIENT_CHECKS]
    if not failed:
        return outcomes
    return [replace(o, converged=False, reason=f"did not converge: {o.reason.removeprefix('converged: ')}, but the "
                                               f"check{'s' if len(failed) > 1 else ''} {', '.join(failed)} failed, so "
                                               "the gradient attacks' silence proves nothing")
            if o.converged and o.steps and o.steps[-1].attacked > o.steps[-1].fooled else o for o in outcomes]


def _kind(white_box: bool) -> str:
    return "white-box" if white_box else "black-box"
