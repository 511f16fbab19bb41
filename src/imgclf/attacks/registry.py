"""The attack registry: every attack, what it can do, and how it is run and reported.

An attack registers itself in its own module with :func:`register_attack`,
decorating a *runner* ``run(spec, model, images, labels, eps, generator, target)``
that calls the attack's function with the settings of an
:class:`~imgclf.attacks.spec.AttackSpec` (any object with :class:`AttackSettings`). Everything that lists or checks
attacks (the CLI's choices and help, the configuration's validation, the
robustness evaluation, the sanity checks, the README's table, the tests that
loop over attacks) reads :data:`ATTACKS`, so a new attack is one new file and
its registration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from imgclf.attacks.core import NORMS


class AttackSettings(Protocol):
    """What a runner reads of an attack's settings (:class:`imgclf.attacks.spec.AttackSpec` has it all)."""

    @property
    def name(self) -> str: ...
    @property
    def norm(self) -> str: ...
    @property
    def n_steps(self) -> int: ...
    @property
    def alpha(self) -> float | None: ...
    @property
    def restarts(self) -> int: ...
    @property
    def random_start(self) -> bool: ...
    @property
    def target(self) -> str | int | None: ...
    @property
    def queries(self) -> int: ...
    @property
    def target_classes(self) -> int: ...


#: ``run(spec, model, images, labels, eps, generator, target) -> adversarial images``.
Runner = Callable[[AttackSettings, torch.nn.Module, torch.Tensor, torch.Tensor, float, torch.Generator,
                   torch.Tensor | None], torch.Tensor]


def _two_classes(targeted: bool) -> int:
    """What most attacks need: a true class and one other."""
    return 2


@dataclass(frozen=True)
class AttackInfo:
    """One registered attack and what it can do.

    Attributes:
        name: The name users give (``--attack NAME``), lower case with dashes.
        run: The runner (see the module docstring).
        summary: One line for tables and help: what it is and its source.
        norms: Threat models it implements, a subset of :data:`~imgclf.attacks.core.NORMS`.
        targetable: Accepts a user-chosen target class (``--target``).
        white_box: Uses the model's gradients (False: only its logits).
        default_steps: Iterations when none are given; ``fixed_steps`` attacks always use it.
        fixed_steps: ``--steps`` does not apply (FGSM is one step; Square counts queries instead).
        min_classes: Classes the attack needs, given whether it is targeted (a user target).
        settings: ``settings(spec, eps)``: the step size, restarts, random start and steps
            it uses at ``eps``, for the results table (``steps`` counts queries for
            query-based attacks).
    """

    name: str
    run: Runner
    summary: str
    norms: tuple[str, ...] = NORMS
    targetable: bool = False
    white_box: bool = True
    default_steps: int = 100
    fixed_steps: bool = False
    min_classes: Callable[[bool], int] = _two_classes
    settings: Callable[[AttackSettings, float], dict[str, Any]] | None = None

    @property
    def iterative(self) -> bool:
        """A gradient attack of several steps (what the convergence and large-eps checks strengthen)."""
        return self.white_box and not self.fixed_steps


#: Every registered attack by name, in registration order (the order of tables and help).
ATTACKS: dict[str, AttackInfo] = {}

#: Named attack lists: FGSM and PGD-20, and the standard AutoAttack ensemble (Croce and Hein 2020).
ATTACK_PRESETS: dict[str, tuple[str, ...]] = {"quick": ("fgsm", "pgd"),
                                               "full": ("apgd-ce", "apgd-t", "fab-t", "square")}


def register_attack(name: str, *, summary: str, norms: tuple[str, ...] = NORMS, targetable: bool = False,
                    white_box: bool = True, default_steps: int = 100, fixed_steps: bool = False,
                    min_classes: Callable[[bool], int] | None = None,
                    settings: Callable[[AttackSettings, float], dict[str, Any]] | None = None,
                    ) -> Callable[[Runner], Runner]:
    """Register the decorated runner as attack ``name`` (see :class:`AttackInfo` for the fields).

    Raises:
        ValueError: If ``name`` is taken, is a preset's name, or ``norms`` names an unknown norm.
    """
    if name in ATTACKS or name in ATTACK_PRESETS:
        raise ValueError(f"attack {name!r} is registered already")
    unknown = [norm for norm in norms if norm not in NORMS]
    if unknown or not norms:
        raise ValueError(f"attack {name!r}: unknown norms {unknown}; valid choices: {', '.join(NORMS)}")

    def decorate(run: Runner) -> Runner:
        ATTACKS[name] = AttackInfo(name, run, summary, tuple(norms), targetable, white_box, default_steps,
                                   fixed_steps, min_classes or _two_classes, settings)
        return run

    return decorate


def unregister_attack(name: str) -> None:
    """Remove attack ``name`` (for tests that register a temporary attack)."""
    ATTACKS.pop(name, None)


def attack_info(name: str) -> AttackInfo:
    """The registered attack ``name``.

    Raises:
        ValueError: On an unknown name, listing the valid ones.
    """
    try:
        return ATTACKS[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; valid choices: {', '.join(ATTACKS)}") from None


def targetable_attacks() -> tuple[str, ...]:
    """Names of the attacks that accept ``--target``."""
    return tuple(name for name, info in ATTACKS.items() if info.targetable)


def expand_attacks(names: list[str]) -> list[str]:
    """Attack names with presets expanded, in order, without repeats."""
    expanded: list[str] = []
    for name in names:
        expanded.extend(ATTACK_PRESETS.get(name, (name,)))
    return list(dict.fromkeys(expanded))


def attacks_table() -> str:
    """The registered attacks as a Markdown table (the README's, checked against this by a test)."""
    lines = ["| `--attack` | method | norms | `--target` | gradients | classes | steps |",
             "| --- | --- | --- | --- | --- | ---: | ---: |"]
    for info in ATTACKS.values():
        steps = "queries" if not info.default_steps else str(info.default_steps) + (" (fixed)" if info.fixed_steps
                                                                                     else "")
        classes = info.min_classes(False)
        if info.targetable and info.min_classes(True) != classes:
            classes_text = f"≥ {classes} (targeted ≥ {info.min_classes(True)})"
        else:
            classes_text = f"≥ {classes}"
        lines.append(f"| `{info.name}` | {info.summary} | {', '.join(info.norms)} | "
                     f"{'yes' if info.targetable else 'no'} | {'white box' if info.white_box else 'black box'} | "
                     f"{classes_text} | {steps} |")
    return "\n".join(lines)
