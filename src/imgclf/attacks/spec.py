"""One attack with its settings, as the robustness evaluation runs it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from imgclf.attacks.registry import AUTO_PLAN, NORMS, attack_info, options_of, targetable_attacks
from imgclf.errors import UsageError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class AttackSpec:
    """One registered attack and its settings (eps is given separately, per sweep point).

    Attributes:
        name: A registered attack (:data:`~imgclf.attacks.registry.ATTACKS`).
        norm: ``"linf"`` or ``"l2"``, one of the attack's norms.
        steps: Iterations; None for the attack's default (FGSM and Square ignore it).
        alpha: PGD step size in pixel units; None for ``2.5 * eps / steps``.
        restarts: Random restarts of PGD, APGD and FAB.
        random_start: PGD starts at a random point of the eps ball.
        target: None (untargeted), ``"random"``, ``"least-likely"``, or a class
            index; only for targetable attacks.
        target_classes: Targets tried by APGD-T, APGD-CE-T and FAB-T.
        options: The attack's own options (:class:`~imgclf.attacks.registry.AttackOption`, ``{"queries": 5000}``
            for Square): given ones over the declared defaults; options that other attacks own are left out.
        tag: Tells this spec apart from another of the same attack in tables (``square (5000 queries)``).
        near: Attack only the examples whose smallest adversarial perturbation found (the minimal-norm search's
            radius, in pixel units under ``norm``) is at most ``near * eps``: the converging plan's step that
            spends restarts where the decision boundary is close. None: every example dealt to it.
        draw: Which draw of the evaluation's random numbers the attack uses (its random start, Square's squares):
            0, the evaluation's seed; another (``>= 1``), fresh random numbers from the same seed, so that the
            converging plan can repeat a search and see whether a new draw finds more.

    Raises:
        ValueError: On an unknown attack, norm or option, an invalid option value, a norm the attack does
            not implement, or a target for an attack that picks its own.
    """

    name: str
    norm: str = "linf"
    steps: int | None = None
    alpha: float | None = None
    restarts: int = 1
    random_start: bool = True
    target: str | int | None = None
    target_classes: int = 9
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    tag: str = ""
    near: float | None = None
    draw: int = 0

    def __post_init__(self) -> None:
        info = attack_info(self.name)
        try:
            object.__setattr__(self, "options", options_of(self.name, self.options))
        except UsageError as error:
            raise ValueError(str(error)) from None
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; valid choices: {', '.join(NORMS)}")
        if self.norm not in info.norms:
            raise ValueError(f"the {self.name} attack is implemented for norm {', '.join(info.norms)} only")
        if self.draw < 0:
            raise ValueError(f"draw must be at least 0, got {self.draw}")
        if self.near is not None and not self.near >= 1:
            raise ValueError(f"near must be at least 1 (a multiple of eps), got {self.near}")
        if self.target is not None and not info.targetable:
            raise ValueError(f"{self.name} picks its own targets; --target applies to "
                             f"{', '.join(targetable_attacks())}")

    @property
    def n_steps(self) -> int:
        """Iterations used: the given ``steps``, else the attack's default (always, for fixed-step attacks)."""
        info = attack_info(self.name)
        return info.default_steps if self.steps is None or info.fixed_steps else self.steps

    @property
    def label(self) -> str:
        """The name shown in tables, with its tag or target mode: ``pgd (target random)``, ``square (5000 queries)``."""
        name = f"{self.name} ({self.tag})" if self.tag else self.name
        return name if self.target is None else f"{name} (target {self.target})"

    def min_classes(self) -> int:
        """Classes the attack needs (DLR losses need 3, targeted DLR 4)."""
        return attack_info(self.name).min_classes(self.target is not None)

    def run(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float,
            gen: torch.Generator, target: torch.Tensor | None = None) -> torch.Tensor:
        """Adversarial versions of ``images`` (``float32`` ``(N, C, H, W)`` in ``[0, 1]``) at ``eps``;
        see each attack's function for the contract."""
        return attack_info(self.name).run(self, model, images, labels, eps, gen, target)

    def settings(self, eps: float) -> dict[str, Any]:
        """Steps, step size, restarts and random start as used at ``eps`` (for the results table)."""
        reported: dict[str, Any] = {"steps": self.n_steps, "alpha": None, "restarts": self.restarts,
                                    "random_start": True, "target": None if self.target is None else str(self.target)}
        describe = attack_info(self.name).settings
        if describe is not None:
            reported.update(describe(self, eps))
        return reported


def plan_specs(norm: str) -> list[AttackSpec]:
    """The converging plan's steps (:data:`~imgclf.attacks.registry.AUTO_PLAN`) under ``norm``, those without
    a version for it, or kept to other norms, left out (Square has no L2 version; FMN steps in for L1)."""
    return [AttackSpec(step.attack, norm=norm, steps=step.steps, restarts=step.restarts, options=step.options,
                       tag=step.tag, target_classes=step.target_classes, near=step.near, draw=step.draw)
            for step in AUTO_PLAN if step.applies(norm)]
