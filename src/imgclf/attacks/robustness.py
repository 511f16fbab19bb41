"""Robust accuracy: every attack at every eps, and the per-example worst case over attacks.

An example counts as robust at an eps only if every attack run failed on it
(the AutoAttack convention, Croce and Hein 2020). Attacks run only on the
examples the model classifies correctly without attack; the rest are wrong
already.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from imgclf.attacks.apgd import apgd, apgd_targeted, min_classes
from imgclf.attacks.fab import fab_targeted
from imgclf.attacks.fgsm import fgsm
from imgclf.attacks.pgd import default_alpha, pgd
from imgclf.attacks.projection import NORMS
from imgclf.attacks.square import square
from imgclf.runtime import generator

ATTACK_NAMES = ("fgsm", "pgd", "apgd-ce", "apgd-dlr", "apgd-t", "apgd-ce-t", "fab-t", "square")
#: Attacks that use the model's gradients (all but Square).
WHITE_BOX = tuple(name for name in ATTACK_NAMES if name != "square")
#: Attacks that accept a user-chosen target (``--target``).
TARGETABLE = ("fgsm", "pgd", "apgd-ce", "apgd-dlr")
#: Named attack lists: FGSM and PGD-20, and the standard AutoAttack ensemble.
PRESETS = {"quick": ("fgsm", "pgd"), "full": ("apgd-ce", "apgd-t", "fab-t", "square")}
#: How ``--target`` picks each example's target class (or a class name or index).
TARGET_MODES = ("random", "least-likely")
#: Default iterations: PGD-20, and AutoAttack's 100 for APGD and FAB.
DEFAULT_STEPS = {"fgsm": 1, "pgd": 20, "apgd-ce": 100, "apgd-dlr": 100, "apgd-t": 100, "apgd-ce-t": 100,
                 "fab-t": 100, "square": 0}
WORST_CASE = "worst-case"


@dataclass(frozen=True)
class AttackSpec:
    """One attack and its settings (eps is given separately, per sweep point).

    Attributes:
        name: One of :data:`ATTACK_NAMES`.
        norm: ``"linf"`` or ``"l2"`` (Square: ``"linf"`` only).
        steps: Iterations; None for :data:`DEFAULT_STEPS`.
        alpha: PGD step size in pixel units; None for ``2.5 * eps / steps``.
        restarts: Random restarts of PGD, APGD and FAB.
        random_start: PGD starts at a random point of the eps ball.
        target: None (untargeted), ``"random"``, ``"least-likely"``, or a class
            index; only for :data:`TARGETABLE` attacks.
        queries: Square's query budget per example.
        target_classes: Targets tried by APGD-T, APGD-CE-T and FAB-T.
    """

    name: str
    norm: str = "linf"
    steps: int | None = None
    alpha: float | None = None
    restarts: int = 1
    random_start: bool = True
    target: str | int | None = None
    queries: int = 5000
    target_classes: int = 9

    def __post_init__(self) -> None:
        if self.name not in ATTACK_NAMES:
            raise ValueError(f"unknown attack {self.name!r}; valid choices: {', '.join(ATTACK_NAMES)}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; valid choices: {', '.join(NORMS)}")
        if self.name == "square" and self.norm != "linf":
            raise ValueError("the square attack is implemented for norm linf only")
        if self.target is not None and self.name not in TARGETABLE:
            raise ValueError(f"{self.name} picks its own targets; --target applies to {', '.join(TARGETABLE)}")

    @property
    def n_steps(self) -> int:
        """Iterations used: FGSM always 1; Square counts queries instead (0)."""
        if self.steps is None or self.name in ("fgsm", "square"):
            return DEFAULT_STEPS[self.name]
        return self.steps

    @property
    def label(self) -> str:
        """The name shown in tables, with the target mode when targeted: ``pgd (target random)``."""
        return self.name if self.target is None else f"{self.name} (target {self.target})"

    def min_classes(self) -> int:
        """Classes the attack needs (DLR losses need 3, targeted DLR 4)."""
        if self.name in ("apgd-dlr", "apgd-t"):
            return min_classes("dlr", self.name == "apgd-t" or self.target is not None)
        return 2

    def run(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float,
            gen: torch.Generator, target: torch.Tensor | None = None) -> torch.Tensor:
        """Adversarial versions of ``images`` (see each attack's function)."""
        name, norm, steps = self.name, self.norm, self.n_steps
        if name == "fgsm":
            return fgsm(model, images, labels, eps=eps, norm=norm, target=target)
        if name == "pgd":
            return pgd(model, images, labels, eps=eps, norm=norm, alpha=self.alpha, steps=steps,
                       restarts=self.restarts, random_start=self.random_start, target=target, generator=gen)
        if name in ("apgd-ce", "apgd-dlr"):
            return apgd(model, images, labels, eps=eps, norm=norm, loss=name[5:], steps=steps,
                        restarts=self.restarts, target=target, generator=gen)
        if name in ("apgd-t", "apgd-ce-t"):
            return apgd_targeted(model, images, labels, eps=eps, norm=norm, loss="dlr" if name == "apgd-t" else "ce",
                                 target_classes=self.target_classes, steps=steps, restarts=self.restarts,
                                 generator=gen)
        if name == "fab-t":
            return fab_targeted(model, images, labels, eps=eps, norm=norm, target_classes=self.target_classes,
                                steps=steps, restarts=self.restarts, generator=gen)
        return square(model, images, labels, eps=eps, norm=norm, queries=self.queries, generator=gen)

    def settings(self, eps: float) -> dict[str, Any]:
        """Steps, step size and restarts as used at ``eps`` (for the results table)."""
        alpha: float | None = None
        if self.name == "fgsm":
            alpha = eps
        elif self.name == "pgd":
            alpha = default_alpha(eps, self.n_steps) if self.alpha is None else self.alpha
        return {"steps": self.queries if self.name == "square" else self.n_steps, "alpha": alpha,
                "restarts": 1 if self.name in ("fgsm", "square") else self.restarts,
                "random_start": self.random_start if self.name == "pgd" else self.name not in ("fgsm", "fab-t"),
                "target": None if self.target is None else str(self.target)}


@dataclass
class RobustnessEntry:
    """One attack (or the worst case over all of them) at one eps.

    Accuracies and rates are fractions in ``[0, 1]``.

    Attributes:
        attack: Attack name, or ``"worst-case"``.
        norm, eps, steps, alpha, restarts, random_start, target: Its settings
            (``steps`` is Square's query budget).
        accuracy: Robust accuracy over all ``n`` examples.
        clean_accuracy: Accuracy of the same ``n`` examples without attack.
        success_rate: Fraction of the initially correct examples the attack fooled.
        target_success_rate: Targeted attacks: fraction of the attacked
            examples classified as their target; else None.
        per_class: Robust accuracy per class index (None for absent classes).
        n: Examples evaluated. seconds: wall time of this attack at this eps.
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


@dataclass
class RobustnessResult:
    """The attack stage's output.

    Attributes:
        entries: Per eps (ascending), one per attack in the order given, then
            the worst case.
        clean_accuracy: Accuracy on the same ``n`` examples without attack.
        n: Number of evaluated examples. seed: Seed of every random draw.
        skipped: Attacks not run, with why (e.g. DLR with fewer than 3 classes).
        fooled: Per ``(attack, eps)``, bool ``(n,)``: the attack fooled the example.
        adversarial: For ``adversarial.pt``: ``eps`` ``(E,)``, ``images``
            ``float32`` ``(E, n, C, H, W)`` (per example the first successful
            attack's output, else the clean image), ``fooled`` ``(E, n)``,
            ``fooled_by`` ``int64`` ``(E, n)`` (index into ``attacks``, -1 none).
        examples: For the report: ``clean`` ``(M, C, H, W)``, ``labels`` and
            ``clean_pred`` ``(M,)``, and per attack at the largest eps
            ``adv_<attack>`` and ``pred_<attack>``, plus ``eps``.
        checks: Sanity checks (see :mod:`imgclf.attacks.checks`), as dicts.
        seconds: Wall time.
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

    def to_dicts(self) -> list[dict[str, Any]]:
        return [asdict(entry) for entry in self.entries]

    @property
    def warnings(self) -> list[str]:
        """The failed checks, one sentence each."""
        return [f"{check['name']}: {check['detail']}" for check in self.checks if check["status"] == "failed"]


def predict(model: torch.nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits ``float32`` ``(N, K)`` of ``images`` in batches, without gradients."""
    with torch.no_grad():
        return torch.cat([model(images[i:i + batch_size]).float() for i in range(0, len(images), batch_size)])


def choose_targets(mode: str | int, logits: torch.Tensor, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each example's target class, never its true label.

    Args:
        mode: ``"random"`` (uniform over the other classes), ``"least-likely"``
            (lowest clean logit), or a class index (examples of that class get -1:
            they cannot be targeted).
        logits: Clean logits ``(N, K)``. labels: ``(N,)``. gen: CPU generator.

    Returns:
        ``int64`` ``(N,)`` target classes, -1 where none applies.

    Raises:
        ValueError: On an unknown mode or a class index out of range.
    """
    classes = logits.shape[1]
    if mode == "random":
        shift = torch.randint(1, classes, labels.shape, generator=gen).to(labels.device)
        return (labels + shift) % classes
    if mode == "least-likely":
        masked = logits.clone()
        masked[torch.arange(len(labels)), labels] = float("inf")
        return masked.argmin(1)
    if isinstance(mode, str) and not mode.isdigit():
        raise ValueError(f"unknown target {mode!r}; valid choices: {', '.join(TARGET_MODES)}, or a class")
    index = int(mode)
    if not 0 <= index < classes:
        raise ValueError(f"target class {index} out of range: the model has {classes} classes")
    return torch.where(labels == index, -1, torch.full_like(labels, index))


def robustness(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    attacks: list[AttackSpec],
    eps_values: list[float],
    device: torch.device,
    batch_size: int = 256,
    seed: int = 0,
    show: int = 8,
    run_checks: bool = True,
    progress=None,
) -> RobustnessResult:
    """Robust accuracy of ``model`` under each attack at each eps, and the worst case.

    Each (attack, eps) point uses a fresh generator seeded with ``seed``, so a
    point's result does not depend on which other points were run. Attacks
    that need more classes than the model has are skipped with a message.

    Args:
        model: In eval mode; maps ``(N, C, H, W)`` in ``[0, 1]`` to logits ``(N, K)``.
        images: ``float32`` ``(N, C, H, W)`` in ``[0, 1]`` (CPU or device).
        labels: ``int64`` ``(N,)``.
        attacks: What to run, in order.
        eps_values: Radii in pixel units under each attack's norm.
        device: Where to compute.
        batch_size: Examples per attack batch.
        seed: Seeds the random starts, squares and targets.
        show: How many examples to keep for the report's figure.
        run_checks: Run the sanity checks of :mod:`imgclf.attacks.checks`.
        progress: Optional callable ``progress(done, total)`` after each batch.

    Returns:
        A :class:`RobustnessResult`.
    """
    from imgclf.attacks.checks import sanity_checks

    start = time.perf_counter()
    eps_values = sorted(set(float(e) for e in eps_values))
    n = int(labels.shape[0])
    images, labels = images.to(device), labels.to(device)  # once, not once per attack and eps
    logits = predict(model, images, batch_size)
    classes = logits.shape[1]
    clean_pred = logits.argmax(1)
    correct = clean_pred == labels
    clean_accuracy = int(correct.sum()) / n if n else float("nan")
    runnable, skipped = [], []
    for spec in attacks:
        if classes < spec.min_classes():
            skipped.append(f"{spec.label} skipped: it needs at least {spec.min_classes()} classes, "
                           f"the model has {classes}")
        else:
            runnable.append(spec)
    targets = {spec: choose_targets(spec.target, logits.cpu(), labels.cpu(), generator(seed)).to(device)
               for spec in runnable if spec.target is not None}
    m = min(show, n)
    examples: dict[str, np.ndarray] = {
        "clean": images[:m].cpu().numpy(), "labels": labels[:m].cpu().numpy(),
        "clean_pred": clean_pred[:m].cpu().numpy(), "eps": np.float32(eps_values[-1]),
    }
    per_spec_rows = {spec: torch.nonzero(correct & (targets[spec] >= 0) if spec in targets else correct).squeeze(1)
                     for spec in runnable}
    chunks = {spec: [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
              for spec, rows in per_spec_rows.items()}
    total = len(eps_values) * sum(max(len(c), 1) for c in chunks.values())
    done = 0
    entries: list[RobustnessEntry] = []
    fooled: dict[tuple[str, float], np.ndarray] = {}
    adversarial = {"eps": torch.tensor(eps_values), "images": [], "fooled": [], "fooled_by": [],
                   "attacks": [spec.label for spec in runnable]}
    for eps in eps_values:
        worst_fooled = torch.zeros(n, dtype=torch.bool, device=device)
        worst_images = images.clone()
        fooled_by = torch.full((n,), -1, dtype=torch.int64, device=device)
        for index, spec in enumerate(runnable):
            began = time.perf_counter()
            gen = generator(seed, device)
            hit = torch.zeros(n, dtype=torch.bool, device=device)
            reached = torch.zeros(n, dtype=torch.bool, device=device)
            for rows in chunks[spec] or [per_spec_rows[spec]]:  # an empty batch still ticks the bar
                if len(rows):
                    target = targets[spec][rows] if spec in targets else None
                    adv = spec.run(model, images[rows], labels[rows], eps, gen, target)
                    pred = predict(model, adv, batch_size).argmax(1)
                    hit[rows] = pred != labels[rows]
                    if target is not None:
                        reached[rows] = pred == target
                    new = hit[rows] & ~worst_fooled[rows]
                    worst_images[rows[new]] = adv[new]
                    fooled_by[rows[new]] = index
                    worst_fooled[rows] |= hit[rows]
                    if eps == eps_values[-1]:
                        shown = rows < m
                        examples.setdefault(f"adv_{spec.name}", examples["clean"].copy())
                        examples.setdefault(f"pred_{spec.name}", examples["clean_pred"].copy())
                        examples[f"adv_{spec.name}"][rows[shown].cpu().numpy()] = adv[shown].cpu().numpy()
                        examples[f"pred_{spec.name}"][rows[shown].cpu().numpy()] = pred[shown].cpu().numpy()
                done += 1
                if progress is not None:
                    progress(done, total)
            fooled[(spec.label, eps)] = hit.cpu().numpy()
            attacked = len(per_spec_rows[spec])
            entries.append(_entry(
                spec.label, eps, correct & ~hit, labels, classes, clean_accuracy, correct,
                settings={"norm": spec.norm, **spec.settings(eps)},
                target_success_rate=(int(reached.sum()) / attacked if attacked else float("nan"))
                if spec in targets else None,
                seconds=time.perf_counter() - began,
            ))
        fooled[(WORST_CASE, eps)] = worst_fooled.cpu().numpy()
        entries.append(_entry(WORST_CASE, eps, correct & ~worst_fooled, labels, classes, clean_accuracy, correct,
                              settings={"norm": ",".join(dict.fromkeys(s.norm for s in runnable)), "steps": None,
                                        "alpha": None, "restarts": None, "random_start": None, "target": None},
                              target_success_rate=None, seconds=0.0))
        adversarial["images"].append(worst_images.cpu())
        adversarial["fooled"].append(worst_fooled.cpu())
        adversarial["fooled_by"].append(fooled_by.cpu())
    for key in ("images", "fooled", "fooled_by"):
        adversarial[key] = torch.stack(adversarial[key])
    result = RobustnessResult(entries, clean_accuracy, n, seed, skipped=skipped, fooled=fooled,
                              adversarial=adversarial, examples=examples)
    if run_checks:
        result.checks = sanity_checks(model, images, labels, logits, result, runnable, batch_size=batch_size,
                                      seed=seed)
    result.seconds = time.perf_counter() - start
    return result


def _entry(attack: str, eps: float, robust: torch.Tensor, labels: torch.Tensor, classes: int,
           clean_accuracy: float, correct: torch.Tensor, *, settings: dict[str, Any],
           target_success_rate: float | None, seconds: float) -> RobustnessEntry:
    n = len(labels)
    per_class: list[float | None] = []
    for k in range(classes):
        members = labels == k
        count = int(members.sum())
        per_class.append(int(robust[members].sum()) / count if count else None)
    initially = int(correct.sum())
    return RobustnessEntry(
        attack=attack, eps=eps, **settings,
        accuracy=int(robust.sum()) / n if n else float("nan"), clean_accuracy=clean_accuracy,
        success_rate=(initially - int(robust.sum())) / initially if initially else float("nan"),
        target_success_rate=target_success_rate, per_class=per_class, n=n, seconds=seconds,
    )
