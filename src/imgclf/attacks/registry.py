"""The attack registry: every attack, what it can do, and how it is run and reported.

An attack is its own module, which holds the attack's function and a *runner*
``run(spec, model, images, labels, eps, generator, target)`` that calls it with the
settings of an :class:`~imgclf.attacks.spec.AttackSpec` (any object with
:class:`AttackSettings`), and one declaration in :data:`ATTACKS`: what it can do, the
options it owns (:class:`AttackOption`: Square's ``queries``), and the runner's
``"module:name"``, imported on the first run. Everything that lists or
checks attacks (the CLI's choices and help, the configuration's validation, the
robustness evaluation, the sanity checks, the documentation's tables, the tests that loop over
attacks) reads :data:`ATTACKS`; none of it imports torch, so a bad flag is refused,
and ``imgclf attacks`` prints, before torch is loaded. A new attack is one new file
and its declaration below; an attack outside imgclf registers its runner directly with
:func:`register_attack`.

This module imports no torch (checked by a test).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from imgclf.constraints import Constraint, Interval
from imgclf.errors import UsageError, unknown_choice

if TYPE_CHECKING:
    import torch

#: The threat models: the L-inf, L2 and L1 balls around an image, in pixel units.
NORMS = ("linf", "l2", "l1")
#: How tables and figures write each norm.
NORM_LABELS = {"linf": "L-inf", "l2": "L2", "l1": "L1"}
#: The threat models an attack implements unless it declares others.
DEFAULT_NORMS = ("linf", "l2")
#: The target modes of a targeted attack besides a class name or index.
TARGET_MODES = ("random", "least-likely")


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
    def options(self) -> Mapping[str, Any]: ...
    @property
    def target_classes(self) -> int: ...


#: ``run(spec, model, images, labels, eps, generator, target) -> adversarial images``.
Runner = Callable[[AttackSettings, "torch.nn.Module", "torch.Tensor", "torch.Tensor", float, "torch.Generator",
                   "torch.Tensor | None"], "torch.Tensor"]


def _two_classes(targeted: bool) -> int:
    """What most attacks need: a true class and one other."""
    return 2


def dlr_min_classes(targeted: bool) -> int:
    """Classes the DLR loss needs: it uses the third (targeted: the fourth) largest logit."""
    return 4 if targeted else 3


def default_alpha(eps: float, steps: int) -> float:
    """Madry et al.'s step size convention, ``2.5 * eps / steps`` (pixel units)."""
    return 2.5 * eps / steps


@dataclass(frozen=True)
class AttackOption:
    """A setting that one attack owns (several may share it, declared alike): declared beside the attack's
    registry row, it becomes the flag ``--NAME``, the configuration's ``attack.options.NAME`` (or
    ``attack.NAME`` in a YAML file), the Python API's keyword (``Run.attack(NAME=...)``), a line of
    ``imgclf attacks`` and part of the evaluation's record; the runner reads it from ``spec.options``.

    Attributes:
        name: Lower case with underscores (the flag has dashes).
        default: The value when none is given; its type is the option's (int, float, bool or str).
        constraint: What values it accepts (:mod:`imgclf.constraints`); None: any of its type.
        help: One line for ``--help``.
        metavar: The value's name in ``--help``.
    """

    name: str
    default: int | float | bool | str
    constraint: Constraint | None
    help: str
    metavar: str = "N"

    @property
    def flag(self) -> str:
        """The command line's flag: ``--queries``."""
        return "--" + self.name.replace("_", "-")

    def describe(self) -> str:
        """The valid values and the default, for help texts."""
        valid = f"{self.constraint.describe()}; " if self.constraint is not None else ""
        return f"{valid}default {self.default}"

    def parse(self, value: Any, where: str) -> Any:
        """``value`` (from YAML, a flag's text or Python) as the option's type, checked.

        Raises:
            UsageError: Naming ``where``, the value and what is valid.
        """
        kind = type(self.default)
        parsed: Any
        text = value.strip() if isinstance(value, str) else value
        try:
            if kind is bool:
                words = {"true": True, "on": True, "yes": True, "false": False, "off": False, "no": False}
                parsed = text if isinstance(text, bool) else words[str(text).lower()]
            elif isinstance(text, bool) or (kind is not str and not isinstance(text, int | float | str)):
                raise ValueError
            elif kind is int and isinstance(text, float):
                parsed = int(text) if text.is_integer() else _not_whole(text)
            else:
                parsed = kind(text)
        except (ValueError, KeyError, OverflowError):
            valid = self.constraint.describe() if self.constraint is not None else f"of type {kind.__name__}"
            raise UsageError(f"{where} must be {valid}, got {value!r}") from None
        if self.constraint is not None and not self.constraint.accepts(parsed):
            raise self.constraint.error(where, value)  # (the value as it was given)
        return parsed


def _not_whole(value: float) -> int:
    raise ValueError(f"{value} is not a whole number")


@dataclass(frozen=True)
class AttackInfo:
    """One registered attack and what it can do.

    Attributes:
        name: The name users give (``--attack NAME``), lower case with dashes.
        runner: The runner (see the module docstring), or its ``"module:name"``, imported by
            :attr:`run` on first use.
        summary: One line for tables and help: what it is and its source.
        norms: Threat models it implements, a subset of :data:`NORMS` (default :data:`DEFAULT_NORMS`).
        targetable: Accepts a user-chosen target class (``--target``).
        white_box: Uses the model's gradients (False: only its logits).
        default_steps: Iterations when none are given; ``fixed_steps`` attacks always use it.
        fixed_steps: ``--steps`` does not apply (FGSM is one step; Square counts queries instead).
        min_classes: Classes the attack needs, given whether it is targeted (a user target).
        settings: ``settings(spec, eps)``: the step size, restarts, random start and steps
            it uses at ``eps``, for the results table (``steps`` counts queries for
            query-based attacks).
        options: The settings this attack alone has (:class:`AttackOption`); the runner reads them
            from ``spec.options``.
    """

    name: str
    runner: Runner | str
    summary: str
    norms: tuple[str, ...] = DEFAULT_NORMS
    targetable: bool = False
    white_box: bool = True
    default_steps: int = 100
    fixed_steps: bool = False
    min_classes: Callable[[bool], int] = _two_classes
    settings: Callable[[AttackSettings, float], dict[str, Any]] | None = None
    options: tuple[AttackOption, ...] = ()

    @property
    def run(self) -> Runner:
        """The runner, its module imported on first use.

        Raises:
            ImportError, AttributeError: If a declared ``"module:name"`` does not exist.
        """
        if isinstance(self.runner, str):
            module, _, name = self.runner.partition(":")
            return getattr(importlib.import_module(module), name)
        return self.runner

    @property
    def iterative(self) -> bool:
        """A gradient attack of several steps (what the convergence and large-eps checks strengthen)."""
        return self.white_box and not self.fixed_steps


#: Every registered attack by name, in registration order (the order of tables and help).
ATTACKS: dict[str, AttackInfo] = {}

#: The minimal-norm attack behind the robustness curve (``attack.minimal_norm``): each example's smallest radius.
MINIMAL_NORM_ATTACK = "fmn"
#: The converging attack plan's name in an attack list (``--attack plan``, and preset ``auto``): :data:`AUTO_PLAN`.
PLAN = "plan"

#: Named attack lists: FGSM and PGD-20; the standard AutoAttack ensemble (Croce and Hein 2020); and the default,
#: FGSM and PGD-20 as comparisons beside the converging plan (:data:`AUTO_PLAN`).
ATTACK_PRESETS: dict[str, tuple[str, ...]] = {"quick": ("fgsm", "pgd"),
                                               "full": ("apgd-ce", "apgd-t", "fab-t", "square"),
                                               "auto": ("fgsm", "pgd", PLAN)}


@dataclass(frozen=True)
class PlanStep:
    """One step of the converging attack plan: a registered attack with its own options, run on the examples
    every earlier attack at that eps failed on.

    Attributes:
        attack: A registered attack's name.
        options: Its own options (:class:`AttackOption`), over the declared defaults.
        tag: Told apart from another step of the same attack in tables: ``square (5000 queries)``.
        steps: Its iterations; None: the attack's default (or ``--steps``).
        norms: The threat models the step belongs to the plan of; empty: every norm its attack implements.
        target_classes: The highest-scoring classes a targeted step (APGD-T, FAB-T) tries, one after another.
        restarts: Its random restarts.
        near: Only the examples still standing whose smallest adversarial perturbation found is within
            ``near * eps`` (:attr:`imgclf.attacks.AttackSpec.near`); None: every example still standing.
        draw: Which draw of random numbers it uses (:attr:`imgclf.attacks.AttackSpec.draw`): another than an
            earlier step of the same search's, to repeat that search afresh.
    """

    attack: str
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    tag: str = ""
    steps: int | None = None
    norms: tuple[str, ...] = ()
    target_classes: int = 9
    restarts: int = 1
    near: float | None = None
    draw: int = 0

    def applies(self, norm: str) -> bool:
        """Whether the plan under ``norm`` has this step."""
        return norm in ATTACKS[self.attack].norms and (not self.norms or norm in self.norms)

    @property
    def label(self) -> str:
        """``square (5000 queries)``, ``fmn (1000 steps; l1)``: the attack, its tag and the norms it is kept to."""
        notes = [note for note in (self.tag, "/".join(self.norms)) if note]
        return f"{self.attack} ({'; '.join(notes)})" if notes else self.attack

    @property
    def white_box(self) -> bool:
        """Uses the model's gradients (the plan's two kinds of evidence: white box and black box)."""
        return ATTACKS[self.attack].white_box


#: How close to the boundary, in multiples of eps, an example's smallest adversarial perturbation found must be
#: for the plan's near-boundary step to attack it again. The examples a fixed-eps attack fools although the
#: minimal-norm search put them further out lie just outside eps: at eps 0.1, 26 of the 27 on the digits
#: ``simple-cnn`` and the MNIST one of ``bench/plan_vs_full.py`` within 1.18 eps, one at 1.41.
NEAR_BOUNDARY = 1.25
#: The fraction of the examples still standing that the plan's long Square search goes on with after its first
#: 1,000 queries: those with the smallest margin (Square's ``focus``). On the FGSM-RS anchor model (eps 0.3,
#: 1,000 test images, two seeds) every example Square fooled between query 1,000 and 5,000 was among the 8% of
#: those standing with the smallest margin at query 1,000.
SQUARE_FOCUS = 0.125
#: The converging plan, cheap first: APGD-CE on every correctly classified example, then escalations on the
#: examples still standing, each of another kind of search: APGD on the DLR loss (invariant to the logits'
#: scale); APGD-DLR again with five restarts on the examples whose smallest adversarial perturbation found (the
#: minimal-norm search runs first) is within :data:`NEAR_BOUNDARY` times eps, where a fixed-eps attack's luck
#: decides; Square's random search (no gradients: what masked gradients cannot hide from); APGD-T towards the
#: three, then the nine highest-scoring classes, with Square's 5,000 queries between them (past the first 1,000
#: on the examples nearest to falling, :data:`SQUARE_FOCUS`), run twice, the second time with fresh random
#: numbers (a search that has converged finds nothing more on a new draw); and targeted FAB.
#: Under L1, which none of them implements, FMN (100 steps) and FMN with 1,000 steps. The plan stops as soon as
#: the latest white-box and the latest black-box escalation each fooled at most the tolerance of the examples
#: they attacked (:func:`imgclf.attacks.plan.decide`).
AUTO_PLAN: tuple[PlanStep, ...] = (
    PlanStep("apgd-ce"),
    PlanStep("apgd-dlr"),
    PlanStep("apgd-dlr", tag="5 restarts near the boundary", restarts=5, near=NEAR_BOUNDARY),
    PlanStep("square", {"queries": 1000}, tag="1000 queries"),
    PlanStep("apgd-t", tag="3 targets", target_classes=3),
    PlanStep("square", {"queries": 5000, "focus": SQUARE_FOCUS}, tag="5000 queries, focus 1/8"),
    PlanStep("square", {"queries": 5000, "focus": SQUARE_FOCUS}, tag="5000 queries, focus 1/8, new draw", draw=1),
    PlanStep("apgd-t", tag="9 targets"),
    PlanStep("fab-t"),
    PlanStep("fmn", norms=("l1",)),
    PlanStep("fmn", tag="1000 steps", steps=1000, norms=("l1",)),
)
#: What the plan may spend per correctly classified example at one eps, in passes of the model (forward and
#: backward): that of AutoAttack's standard version when no example falls early: APGD-CE (100 steps), APGD-T
#: (9 targets of 100 steps) and FAB-T (9 targets of 100 steps) at a forward and a backward pass per step, and
#: Square's 5,000 queries of a forward pass each.
AUTOATTACK_PASSES = 2 * 100 + 2 * 900 + 2 * 900 + 5000
#: The default tolerance of the plan (``attack.plan_tolerance``): an escalation that fools at most this
#: fraction of the examples still standing counts as finding nothing more. Half the sanity checks' 1%, so a
#: converged plan leaves the convergence check room.
PLAN_TOLERANCE = 0.005


def register_attack(name: str, *, summary: str, norms: tuple[str, ...] = DEFAULT_NORMS, targetable: bool = False,
                    white_box: bool = True, default_steps: int = 100, fixed_steps: bool = False,
                    min_classes: Callable[[bool], int] | None = None,
                    settings: Callable[[AttackSettings, float], dict[str, Any]] | None = None,
                    options: tuple[AttackOption, ...] = ()) -> Callable[[Runner], Runner]:
    """Register the decorated runner as attack ``name`` (see :class:`AttackInfo` for the fields).

    Raises:
        ValueError: If ``name`` is taken, is a preset's name, ``norms`` names an unknown norm, or an option
            has the name of another attack's option but not its declaration.
    """
    def decorate(run: Runner) -> Runner:
        _declare(AttackInfo(name, run, summary, tuple(norms), targetable, white_box, default_steps, fixed_steps,
                            min_classes or _two_classes, settings, tuple(options)))
        return run

    return decorate


def _declare(info: AttackInfo) -> None:
    if info.name in ATTACKS or info.name in ATTACK_PRESETS:
        raise ValueError(f"attack {info.name!r} is registered already")
    unknown = [norm for norm in info.norms if norm not in NORMS]
    if unknown or not info.norms:
        raise ValueError(f"attack {info.name!r}: unknown norms {unknown}; valid choices: {', '.join(NORMS)}")
    declared = {option.name: option for known in ATTACKS.values() for option in known.options}
    for option in info.options:
        if option.name in declared and declared[option.name] != option:
            raise ValueError(f"attack {info.name!r}: option {option.name!r} is declared otherwise by another attack; "
                             "give it another name")
    ATTACKS[info.name] = info


def _pgd_settings(spec: AttackSettings, eps: float) -> dict[str, Any]:
    return {"alpha": default_alpha(eps, spec.n_steps) if spec.alpha is None else spec.alpha,
            "random_start": spec.random_start}


# The built-in attacks, in the order of tables and help; each runner lives in its attack's module.
for _info in (
    AttackInfo("fgsm", "imgclf.attacks.fast_gradient:run_fgsm",
               "FGSM (Goodfellow et al. 2015): one step of eps; under L2 the fast gradient method",
               targetable=True, default_steps=1, fixed_steps=True,
               settings=lambda spec, eps: {"alpha": eps, "restarts": 1, "random_start": False}),
    AttackInfo("pgd", "imgclf.attacks.projected_gradient:run_pgd",
               "PGD (Madry et al. 2018): random start, `--steps`, `--step-size` (default 2.5·eps/steps), "
               "`--restarts`", targetable=True, default_steps=20, settings=_pgd_settings),
    AttackInfo("apgd-ce", "imgclf.attacks.auto_pgd:run_apgd_ce",
               "APGD on the cross-entropy (Croce & Hein 2020): momentum and a self-tuning step size",
               targetable=True),
    AttackInfo("apgd-dlr", "imgclf.attacks.auto_pgd:run_apgd_dlr",
               "APGD on the DLR loss, invariant to shifting and scaling the logits", targetable=True,
               min_classes=dlr_min_classes),
    AttackInfo("apgd-t", "imgclf.attacks.auto_pgd:run_apgd_t",
               "APGD towards each of the 9 highest-scoring wrong classes, targeted DLR loss (AutoAttack's)",
               min_classes=lambda targeted: dlr_min_classes(True)),
    AttackInfo("apgd-ce-t", "imgclf.attacks.auto_pgd:run_apgd_ce_t",
               "APGD towards each of the 9 highest-scoring wrong classes, targeted cross-entropy"),
    AttackInfo("fab-t", "imgclf.attacks.fab:run_fab",
               "targeted FAB (Croce & Hein 2020): minimal perturbation via exact box-constrained projections",
               settings=lambda spec, eps: {"random_start": False}),
    AttackInfo("fmn", "imgclf.attacks.minimal_norm:run_fmn",
               "FMN (Pintor et al. 2021): the smallest perturbation it finds, kept where within eps; the "
               "robustness curve's minimal-norm attack", norms=NORMS,
               settings=lambda spec, eps: {"random_start": False}),
    AttackInfo("square", "imgclf.attacks.square_search:run_square",
               "Square Attack (Andriushchenko et al. 2020): random search on the logits alone, `--queries` "
               "(default 5,000)", norms=("linf",), white_box=False, default_steps=0, fixed_steps=True,
               settings=lambda spec, eps: {"steps": spec.options["queries"], "restarts": 1},
               options=(AttackOption("queries", 5000, Interval(int, 1, 10_000_000), "Square's queries per example"),
                        AttackOption("focus", 1.0, Interval(float, 0, 1, closed="right"),
                                     "the fraction of the examples still standing after a fifth of Square's queries "
                                     "that it goes on with, those with the smallest margin (1: all)",
                                     metavar="F"))),
):
    _declare(_info)


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


def attack_options() -> dict[str, AttackOption]:
    """Every option the registered attacks own, by name (an option several attacks share appears once)."""
    return {option.name: option for info in ATTACKS.values() for option in info.options}


def parse_options(given: Mapping[str, Any]) -> dict[str, Any]:
    """The attacks' own options in ``given`` (from YAML, flags or Python), each read as its declared type
    and checked (:meth:`AttackOption.parse`).

    Raises:
        UsageError: On an option no registered attack owns (naming the valid ones), or an invalid value.
    """
    declared = attack_options()
    unknown = [key for key in given if key not in declared]
    if unknown:
        raise unknown_choice("attack option", unknown[0], declared)
    return {key: declared[key].parse(value, f"attack.{key}") for key, value in given.items()}


def options_of(name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """Attack ``name``'s own options: ``given``'s values (checked, :func:`parse_options`) over the declared
    defaults; options that other attacks own are left out.

    Raises:
        UsageError: On an option no registered attack owns (naming the valid ones), or an invalid value.
    """
    parsed = parse_options(given)
    return {option.name: parsed.get(option.name, option.default) for option in attack_info(name).options}


def targetable_attacks() -> tuple[str, ...]:
    """Names of the attacks that accept ``--target``."""
    return tuple(name for name, info in ATTACKS.items() if info.targetable)


def expand_attacks(names: list[str], norm: str | None = None) -> list[str]:
    """Attack names with presets expanded, in order, without repeats (:data:`PLAN` stays as it is); with a
    ``norm``, a preset's attacks without a version for it are left out (a name given alone stays, to be refused)."""
    expanded: list[str] = []
    for name in names:
        members = ATTACK_PRESETS.get(name)
        expanded.extend((name,) if members is None else
                        (m for m in members if norm is None or m == PLAN or norm in ATTACKS[m].norms))
    return list(dict.fromkeys(expanded))


def attacks_table() -> str:
    """The registered attacks as a Markdown table (the documentation site's, written when it is built)."""
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
