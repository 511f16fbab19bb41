"""What a robustness evaluation returns: one entry per attack and eps, and the whole result.

The sanity checks (:mod:`imgclf.attacks.checks`) and the report read these
without importing the evaluation that made them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from imgclf.notebook import ResultHTML, Table

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


#: The paired sign test's level below which the minimal-norm curve counts as missing what the fixed-eps attacks found.
MISSED_P = 0.05


@dataclass
class MinimalNormAgreement:
    """The minimal-norm curve against the fixed-eps worst case at one eps, on the same examples.

    Attributes:
        eps: The radius, in pixel units.
        fixed_accuracy: The worst case over the fixed-eps attacks, a fraction in ``[0, 1]``.
        curve_accuracy: The share of examples whose smallest adversarial radius found is larger than ``eps``.
        only_fixed: Examples the fixed-eps attacks fooled at ``eps`` whose smallest radius found is larger.
        only_minimal: Examples with a radius of at most ``eps`` that every fixed-eps attack failed on.
        p_value: One-sided exact sign test (McNemar's) that the curve misses more than it finds, on the
            ``only_fixed + only_minimal`` examples where the two disagree (1 where none do).
        missed: ``p_value < MISSED_P``: the curve lies above the fixed-eps result by more than sampling noise.
        combined_accuracy: The share robust to both, the fixed-eps attacks and the minimal-norm attack within
            ``eps``: the tightest upper bound the evaluation has, and the worst case it reports at ``eps``.
    """

    eps: float
    fixed_accuracy: float
    curve_accuracy: float
    only_fixed: int
    only_minimal: int
    p_value: float
    missed: bool
    combined_accuracy: float = float("nan")


@dataclass
class MinimalNorm:
    """The minimal-norm attack's run: each example's smallest adversarial radius, summarized (the radii
    themselves are ``examples["minimal_radii"]`` of the :class:`RobustnessResult`, and ``adversarial.npz``).

    Attributes:
        attack: Its label (``fmn``). norm: ``"linf"``, ``"l2"`` or ``"l1"``. steps: Its iterations.
        attacked: Examples it ran on (classified correctly without attack).
        found: How many of them it found an adversarial perturbation for.
        median: The median smallest radius over the attacked examples, in pixel units (those not found count
            as larger than every radius); None when it found fewer than half.
        seconds, forwards, backwards: Its wall time and passes of the model, counted in examples.
        agreement: Per eps above 0 of the evaluation, against the fixed-eps worst case.
    """

    attack: str
    norm: str
    steps: int
    attacked: int
    found: int
    median: float | None
    seconds: float = 0.0
    forwards: int = 0
    backwards: int = 0
    agreement: list[MinimalNormAgreement] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        """One sentence per eps where the curve missed (lies above the fixed-eps result beyond noise), and per eps
        where it found examples every fixed-eps attack missed (they count in the worst case)."""
        notes = []
        for row in self.agreement:
            if row.missed:
                notes.append(f"at eps {row.eps:.4g} the minimal-norm curve ({row.curve_accuracy:.2%}) lies above the "
                             f"fixed-eps worst case ({row.fixed_accuracy:.2%}) beyond sampling noise (sign test p = "
                             f"{row.p_value:.2g}): {self.attack} missed {row.only_fixed} example(s) the fixed-eps "
                             "attacks fooled; the curve is only an upper bound there (an untargeted minimal-norm "
                             "search can settle where a fixed-eps attack with another loss or target finds a way)")
            if row.only_minimal:
                notes.append(f"at eps {row.eps:.4g} {self.attack} found {row.only_minimal} example(s) within eps that "
                             f"every fixed-eps attack failed on: they count in the worst case "
                             f"({row.combined_accuracy:.2%}, the fixed-eps attacks alone {row.fixed_accuracy:.2%})")
        return notes


def curve_accuracy(radii: np.ndarray, eps: float) -> float:
    """The robust accuracy at ``eps`` that smallest adversarial radii ``radii`` (``(n,)``, 0 for a misclassified
    example, inf where none was found) imply: the share larger than ``eps``; NaN without examples."""
    return float((radii > eps).mean()) if len(radii) else float("nan")


def agreement(radii: np.ndarray, fooled: dict[float, np.ndarray], correct: np.ndarray) -> list[MinimalNormAgreement]:
    """The curve of ``radii`` against the fixed-eps worst case ``fooled`` (per eps, bool ``(n,)``) of the examples
    ``correct`` without attack (bool ``(n,)``): per eps above 0, what each found that the other did not, and the
    one-sided exact sign test on those (:func:`scipy.stats.binomtest`)."""
    from scipy.stats import binomtest

    rows = []
    n = len(radii)

    def share(mask: np.ndarray) -> float:
        return float(mask.sum() / n) if n else float("nan")

    for eps in sorted(e for e in fooled if e > 0):
        fixed = fooled[eps]
        minimal = correct & (radii <= eps)
        only_fixed, only_minimal = int((fixed & ~minimal).sum()), int((minimal & ~fixed).sum())
        disagree = only_fixed + only_minimal
        p_value = float(binomtest(only_fixed, disagree, 0.5, alternative="greater").pvalue) if disagree else 1.0
        rows.append(MinimalNormAgreement(eps, share(correct & ~fixed), curve_accuracy(radii, eps), only_fixed,
                                         only_minimal, p_value, p_value < MISSED_P,
                                         share(correct & ~fixed & ~minimal)))
    return rows


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
        minimal_norm: The minimal-norm attack's summary, when it ran (:class:`MinimalNorm`); its radii are
            ``examples["minimal_radii"]``, ``float32`` ``(n,)`` in pixel units (0: misclassified, inf: none found).
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
    minimal_norm: MinimalNorm | None = None

    def to_dicts(self) -> list[dict[str, Any]]:
        """The entries as plain dicts (``metrics.json``'s ``robustness``)."""
        return [asdict(entry) for entry in self.entries]

    @property
    def warnings(self) -> list[str]:
        """The failed checks, one sentence each."""
        return [f"{check['name']}: {check['detail']}" for check in self.checks if check["status"] == "failed"]

    def html(self, title: str = "Robustness evaluation") -> ResultHTML:
        """The evaluation as Jupyter shows it: the worst case per eps, every attack's row with its cost, the
        failed checks as an alert, and why the plan's number is believed."""
        worst = ", ".join(f"{e.accuracy:.4f} at eps {e.eps:.4g}" for e in self.entries if e.attack == WORST_CASE)
        facts = [f"{self.n:,} images, clean accuracy {self.clean_accuracy:.4f}, {self.seconds:.1f} s",
                 f"worst-case robust accuracy: {worst}"]
        attacked = [e for e in self.entries if e.eps > 0] or self.entries  # eps 0 is the clean accuracy above
        rows = [[e.attack, f"{e.eps:.4g}", e.accuracy, e.success_rate, e.forwards_per_example,
                 e.backwards_per_example, round(e.seconds, 1)] for e in attacked]
        table = Table(["attack", "eps", "robust accuracy", "success rate", "forward passes per example",
                       "backward passes per example", "seconds"], rows)
        checks = Table(["sanity check", "result", "measured"],
                       [[c["name"], c["status"], c["detail"]] for c in self.checks])
        notes = [f"plan at eps {o.eps:.4g}: {o.reason}" for o in self.plan]
        notes += [f"not run: {reason}" for reason in self.skipped]
        found = self.minimal_norm
        if found is not None:
            median = "not known (found for fewer than half)" if found.median is None else f"{found.median:.4g}"
            notes.append(f"{found.attack.upper()} (minimal norm): found for {found.found} of {found.attacked}, "
                         f"median smallest perturbation {median}")
            notes += found.warnings
        failed = self.warnings
        if failed:
            failed.insert(0, f"{len(failed)} sanity check(s) failed: treat the robust accuracy as unproven")
        return ResultHTML(title, facts, [table, checks] if self.checks else [table], failed, notes)

    def _repr_html_(self) -> str:
        return self.html().render()

    def __repr__(self) -> str:
        worst = {e.eps: round(e.accuracy, 4) for e in self.entries if e.attack == WORST_CASE}
        return (f"RobustnessResult(n={self.n}, clean_accuracy={self.clean_accuracy:.4f}, worst_case={worst}, "
                f"failed_checks={len(self.warnings)})")


def batched_logits(model: torch.nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits ``float32`` ``(N, K)`` of ``images`` ``(N, C, H, W)`` in batches, without gradients."""
    with torch.no_grad():
        return torch.cat([model(images[i:i + batch_size]).float() for i in range(0, len(images), batch_size)])
