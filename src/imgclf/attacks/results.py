"""What a robustness evaluation returns: one entry per attack and eps, and the whole result.

The sanity checks (:mod:`imgclf.attacks.checks`) and the report read these
without importing the evaluation that made them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

#: The attack name of the per-example worst case over every attack of an evaluation.
WORST_CASE = "worst-case"


@dataclass
class RobustnessEntry:
    """One attack (or the worst case over all of them) at one eps.

    Accuracies and rates are fractions in ``[0, 1]``.

    Attributes:
        attack: Attack label, or :data:`WORST_CASE`.
        norm, eps, steps, alpha, restarts, random_start, target: Its settings
            (``steps`` is Square's query budget).
        accuracy: Robust accuracy over all ``n`` examples.
        clean_accuracy: Accuracy of the same ``n`` examples without attack.
        success_rate: Fraction of the initially correct examples the attack fooled.
        target_success_rate: Targeted attacks: fraction of the attacked
            examples classified as their target; else None.
        per_class: Robust accuracy per class index (None for absent classes).
        n: Examples evaluated. seconds: wall time of this attack at this eps.
        attacked: Examples the attack ran on (those classified correctly without attack).
        forwards, backwards: Forward and backward passes of the model, counted in examples (a batch of 256
            is 256), over the attack and its final prediction: the work done, comparable across libraries.
    """

    attack: str
    norm: str
    eps: float
    steps: int | None
    alpha: float | None
    restarts: int | None
    random_start: bool | None
    target: str | None
    accuracy: float
    clean_accuracy: float
    success_rate: float
    target_success_rate: float | None
    per_class: list[float | None]
    n: int
    seconds: float = 0.0
    attacked: int = 0
    forwards: int = 0
    backwards: int = 0

    @property
    def forwards_per_example(self) -> float | None:
        """Forward passes per attacked example (None when nothing was attacked)."""
        return self.forwards / self.attacked if self.attacked else None

    @property
    def backwards_per_example(self) -> float | None:
        """Backward passes per attacked example (None when nothing was attacked)."""
        return self.backwards / self.attacked if self.attacked else None


@dataclass
class PlanStepOutcome:
    """One step of the converging plan at one eps (:data:`imgclf.attacks.registry.AUTO_PLAN`).

    Attributes:
        attack: The step's label (``square (1000 queries)``).
        white_box: Whether it used the model's gradients.
        attacked: Examples still standing when it ran (correct without attack, fooled by no earlier attack).
        fooled: How many of them it fooled.
        forwards, backwards: Passes of the model it spent, counted in examples.
        seconds: Its wall time.
    """

    attack: str
    white_box: bool
    attacked: int
    fooled: int
    forwards: int = 0
    backwards: int = 0
    seconds: float = 0.0


@dataclass
class PlanOutcome:
    """The converging plan at one eps: the steps it ran, whether it converged, and why.

    Attributes:
        eps: The radius, in pixel units.
        converged: True when the latest white-box and the latest black-box escalation (of those the model
            allows) each fooled at most ``tolerance`` of the examples they attacked, or nothing was left standing.
        reason: One sentence saying why the number is believed, or why not.
        tolerance: The fraction of the examples still standing an escalation may fool and count as finding
            nothing more.
        passes_per_example: Passes (forward and backward) the plan spent per correctly classified example.
        budget: The most it may spend (AutoAttack's standard version's, per example).
        steps: The steps it ran, in order.
    """

    eps: float
    converged: bool
    reason: str
    tolerance: float
    passes_per_example: float
    budget: float
    steps: list[PlanStepOutcome] = field(default_factory=list)


@dataclass
class RobustnessResult:
    """The attack stage's output.

    Attributes:
        entries: Per eps (ascending), one per attack in the order given, then
            the worst case.
        clean_accuracy: Accuracy on the same ``n`` examples without attack.
        n: Number of evaluated examples. seed: Seed of every random draw.
        skipped: Attacks not run, with why (e.g. DLR with fewer than 3 classes).
        fooled: Per ``(attack label, eps)``, bool ``(n,)``: the attack fooled the example.
        adversarial: For ``adversarial.pt``: ``eps`` ``(E,)``, ``images``
            ``float32`` ``(E, n, C, H, W)`` (per example the first successful
            attack's output, else the clean image), ``fooled`` ``(E, n)``,
            ``fooled_by`` ``int64`` ``(E, n)`` (index into ``attacks``, -1 none).
        examples: For the report: ``clean`` ``(M, C, H, W)``, ``labels`` and
            ``clean_pred`` ``(M,)``, and per attack at the largest eps
            ``adv_<attack>`` and ``pred_<attack>``, plus ``eps``.
        checks: Sanity checks (see :mod:`imgclf.attacks.checks`), as dicts.
        seconds: Wall time.
        plan: The converging plan's outcome per eps (ascending), when it ran (:class:`PlanOutcome`).
    """

    entries: list[RobustnessEntry]
    clean_accuracy: float
    n: int
    seed: int
    skipped: list[str] = field(default_factory=list)
    fooled: dict[tuple[str, float], np.ndarray] = field(default_factory=dict)
    adversarial: dict[str, Any] = field(default_factory=dict)
    examples: dict[str, np.ndarray] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    plan: list[PlanOutcome] = field(default_factory=list)

    def to_dicts(self) -> list[dict[str, Any]]:
        """The entries as plain dicts (``metrics.json``'s ``robustness``)."""
        return [asdict(entry) for entry in self.entries]

    @property
    def warnings(self) -> list[str]:
        """The failed checks, one sentence each."""
        return [f"{check['name']}: {check['detail']}" for check in self.checks if check["status"] == "failed"]


def batched_logits(model: torch.nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits ``float32`` ``(N, K)`` of ``images`` ``(N, C, H, W)`` in batches, without gradients."""
    with torch.no_grad():
        return torch.cat([model(images[i:i + batch_size]).float() for i in range(0, len(images), batch_size)])
