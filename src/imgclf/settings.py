"""Settings resolved once: the validated configuration turned into the typed values every stage uses.

A :class:`~imgclf.config.RunConfig` keeps what the user wrote (``8/255`` stays
``8/255`` in ``config.yaml``). :func:`resolve` turns it, once, into a
:class:`Settings`: eps lists as floats with their written forms, the training
eps, the number of attacked examples, the attack target as a mode or class
index, and the attacks themselves. No stage parses a string again.

The configuration's validation calls :func:`resolve` without the data (so a
bad eps fails before any data is loaded); the pipeline calls it again with the
data's channels and class names, which fix the default eps and a named target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

from imgclf.attacks import (
    ATTACKS,
    MINIMAL_NORM_ATTACK,
    PLAN,
    TARGET_MODES,
    AttackSpec,
    expand_attacks,
    plan_specs,
)
from imgclf.corruptions.registry import parse_corruptions, parse_severities
from imgclf.errors import UsageError
from imgclf.sections import RunConfig

#: Default eps lists (pixel units, images in [0, 1]) when the user gives none, by norm and colour.
DEFAULT_EPS = {
    ("linf", 3): ("0", "1/255", "2/255", "4/255", "8/255"),
    ("linf", 1): ("0", "0.05", "0.1", "0.2", "0.3"),
    ("l2", 3): ("0", "0.25", "0.5", "1"),  # the perturbation's Euclidean length in pixel units
    ("l2", 1): ("0", "0.5", "1", "2", "3"),
    ("l1", 3): ("0", "3", "6", "12"),  # the sum of the pixels' changes, in pixel units
    ("l1", 1): ("0", "2.5", "5", "10"),
}
#: Most eps values one list may expand to (a range with a tiny step would ask for billions).
MAX_EPS_VALUES = 1000


@dataclass(frozen=True)
class Eps:
    """One eps value in pixel units and the form it was written in (``8/255``, ``0.1``)."""

    value: float
    text: str


@dataclass(frozen=True)
class Settings:
    """The typed settings of a run, from :func:`resolve`.

    Attributes:
        config: The configuration with the defaults that depend on the data
            filled in as written forms (``attack.eps``, ``adversarial.eps``): what
            ``config.yaml`` records.
        eps: The attack eps values in the order given, or None where the data's
            channels are not known yet and no eps was given.
        train_eps: The adversarial training radius, or None without adversarial
            training (or before the default is known).
        examples: Test images to attack, or None for all of them.
        target: None (untargeted), ``"random"``, ``"least-likely"``, or a class index
            (a class name is only resolved once the class names are known).
        attacks: The configured attacks, presets expanded (the converging plan aside).
        plan: The converging plan's steps (:func:`imgclf.attacks.plan_specs`) where it was asked for
            (``plan`` or preset ``auto``), else empty.
        corruptions: The common corruptions' names, groups and ``all`` expanded, in registry order.
        severities: Their severities, ascending.
        minimal_norm: The minimal-norm attack (``fmn`` under ``attack.norm``, ``attack.steps``) where
            ``attack.minimal_norm`` asks for it, else None.
    """

    config: RunConfig
    eps: tuple[Eps, ...] | None
    train_eps: Eps | None
    examples: int | None
    target: str | int | None
    attacks: tuple[AttackSpec, ...]
    corruptions: tuple[str, ...] = ()
    severities: tuple[int, ...] = ()
    plan: tuple[AttackSpec, ...] = ()
    minimal_norm: AttackSpec | None = None

    @property
    def eps_values(self) -> list[float]:
        """The attack eps values as floats.

        Raises:
            ValueError: Before the default eps are known (resolved without the data's channels).
        """
        if self.eps is None:
            raise ValueError("the eps values depend on the data's channels: resolve with channels=")
        return [eps.value for eps in self.eps]


def norm_resets_eps(overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` (dotted keys, ``{"attack.norm": "l2"}``) for a configuration that has its eps already:
    a new ``attack.norm`` without ``attack.eps`` also sets ``attack.eps`` to None, so that :func:`resolve`
    takes that norm's default list (an L-inf list is no L2 list)."""
    if "attack.norm" in overrides and "attack.eps" not in overrides:
        return {**overrides, "attack.eps": None}
    return overrides


def parse_eps(values: str | float | Sequence[str | float], norm: str = "linf") -> list[Eps]:
    """Parse eps values given in pixel units (L-inf: at most 1; L2: any length >= 0).

    Accepts numbers (``0.03``), fractions (``8/255``), comma-separated lists of
    them, and inclusive ranges ``start:stop:step`` (``0:8/255:2/255`` is
    0, 2/255, 4/255, 6/255, 8/255).

    Args:
        values: A string, a number, or a list of strings and numbers.
        norm: ``"linf"`` (values in ``[0, 1]``) or ``"l2"`` (values ``>= 0``).

    Returns:
        The eps values in the order given, each with its written form (a range's
        values are written as decimals when its bounds are, else as fractions).

    Raises:
        UsageError: If a value is not a number, is negative or above 1 under
            L-inf, a range is empty, has a non-positive step or more than
            :data:`MAX_EPS_VALUES` values, or nothing is given.
    """
    items = values if isinstance(values, (list, tuple)) else [values]
    result: list[Eps] = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            if ":" in part:
                result.extend(_parse_range(part, norm))
            else:
                result.append(Eps(float(_parse_value(part, part, norm)), part))
            if len(result) > MAX_EPS_VALUES:
                raise UsageError(f"too many eps values in {values!r}: at most {MAX_EPS_VALUES}; use a larger step")
    if not result:
        raise UsageError("no eps given; expected values such as 0,2/255,8/255")
    return result


def _parse_value(text: str, shown: str, norm: str) -> Fraction:
    valid = "in [0, 1]" if norm == "linf" else ">= 0"
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise UsageError(
            f"invalid eps {shown!r}: expected a number {valid} (pixel units) such as 0.03 or 8/255"
        ) from None
    if value < 0 or (norm == "linf" and value > 1):
        raise UsageError(f"invalid eps {shown!r}: eps is in pixel units and must be {valid} under {norm}")
    return value


def _parse_range(text: str, norm: str) -> list[Eps]:
    pieces = [piece.strip() for piece in text.split(":")]
    if len(pieces) != 3:
        raise UsageError(f"invalid eps range {text!r}: expected start:stop:step such as 0:8/255:1/255")
    start, stop, step = (_parse_value(piece, text, norm) for piece in pieces)  # each bound a valid eps
    if step <= 0 or stop < start:
        raise UsageError(f"invalid eps range {text!r}: needs step > 0 and stop >= start")
    count = math.floor((stop - start) / step) + 1
    if count > MAX_EPS_VALUES:
        raise UsageError(f"invalid eps range {text!r}: {count:,} values, at most {MAX_EPS_VALUES}; use a larger step")
    values = [start + i * step for i in range(count)]
    if not any("/" in piece for piece in pieces):  # written as decimals: 0.05, 0.1, ...
        return [Eps(float(v), f"{float(v):g}") for v in values]
    denominator = math.lcm(start.denominator, stop.denominator, step.denominator)  # 6/255, not 2/85
    return [Eps(float(v), "0" if v == 0 else f"{v * denominator}/{denominator}") for v in values]


def resolve(config: RunConfig, *, channels: int | None = None, class_names: list[str] | None = None) -> Settings:
    """Turn a validated configuration into typed settings (see the module docstring).

    Args:
        config: A configuration whose declared constraints hold.
        channels: The data's channels (1 or 3): they pick the default eps list.
            None checks what can be checked without the data.
        class_names: The data's classes: a ``--target`` class name becomes its index.

    Returns:
        The :class:`Settings`.

    Raises:
        UsageError: On an invalid eps, an adversarial eps that is not one value
            or is 0, or a target that is neither a mode nor a class.
    """
    attack, adversarial = config.attack, config.adversarial
    if attack.eps is not None and not attack.eps:
        raise UsageError("attack.eps is empty; give radii in pixel units such as 0,8/255 or 0:0.3:0.1, or leave it "
                         "out for the default list")
    if attack.eps is not None:
        eps: tuple[Eps, ...] | None = tuple(parse_eps(attack.eps, attack.norm))
    elif channels is not None:
        eps = tuple(parse_eps(list(DEFAULT_EPS[(attack.norm, 3 if channels == 3 else 1)]), attack.norm))
        config = replace(config, attack=replace(attack, eps=[value.text for value in eps]))
    else:
        eps = None
    train_eps = None
    if adversarial.enabled:
        train_eps = _train_eps(adversarial.eps, eps, attack.norm)
        if train_eps is not None and adversarial.eps is None:
            config = replace(config, adversarial=replace(adversarial, eps=train_eps.text))
    target = _target(attack.target, class_names)
    names = expand_attacks(attack.attacks, attack.norm)
    plan = tuple(plan_specs(attack.norm)) if PLAN in names else ()
    if not plan and all(name == PLAN for name in names):
        raise UsageError(f"no attack of {', '.join(attack.attacks)} implements norm {attack.norm}; name one that "
                         f"does: {', '.join(name for name, info in ATTACKS.items() if attack.norm in info.norms)}")
    try:
        attacks = tuple(AttackSpec(name, norm=attack.norm, steps=attack.steps, alpha=attack.alpha,
                                   restarts=attack.restarts, random_start=attack.random_start, target=target,
                                   options=attack.options)
                        for name in names if name != PLAN)
    except ValueError as error:
        raise UsageError(str(error)) from None
    owned = {key: value for spec in attacks for key, value in spec.options.items()}
    if any(config.attack.options.get(key) != value for key, value in owned.items()):  # the defaults, written out
        config = replace(config, attack=replace(config.attack, options={**config.attack.options, **owned}))
    examples = None if attack.examples in (None, "all") else int(attack.examples)
    try:  # the one place corruption names and severities are parsed
        corruptions = parse_corruptions(config.corruption.corruptions)
        severities = parse_severities(config.corruption.severities)
    except ValueError as error:
        raise UsageError(str(error)) from None
    minimal = AttackSpec(MINIMAL_NORM_ATTACK, norm=attack.norm, steps=attack.steps) if attack.minimal_norm else None
    return Settings(config, eps, train_eps, examples, target, attacks, corruptions, severities, plan, minimal)


def _train_eps(given: str | None, attack_eps: tuple[Eps, ...] | None, norm: str) -> Eps | None:
    """The training radius: ``adversarial.eps`` if given, else the largest attack eps (the first of
    equal ones); None while the default attack eps are not known."""
    if given is not None:
        if not given.strip():
            raise UsageError("adversarial.eps is empty; give one radius in pixel units such as 0.3 or 8/255, or "
                             "leave it out for the largest attack eps")
        values = parse_eps(given, norm)
        if len(values) != 1:
            raise UsageError(f"adversarial.eps is one radius, got {given!r}")
        chosen = values[0]
    elif attack_eps is None:
        return None
    else:
        chosen = max(attack_eps, key=lambda e: e.value)
    if chosen.value == 0:
        raise UsageError("adversarial training at eps 0 is standard training; give --adv-eps or --eps above 0")
    return chosen


def _target(target: str | None, class_names: list[str] | None) -> str | int | None:
    """A ``--target`` as a mode or a class index (a name stays a name until the class names are known)."""
    if target is None:
        return None
    text = str(target).strip()
    if not text:
        raise UsageError(f"attack.target is empty; valid choices: {', '.join(TARGET_MODES)}, or a class")
    if text in TARGET_MODES:
        return text
    if class_names is None:
        return text
    if text in class_names:
        return class_names.index(text)
    if text.isdigit() and int(text) < len(class_names):
        return int(text)
    raise UsageError(f"unknown target {text!r}; valid choices: {', '.join(TARGET_MODES)}, "
                     f"or a class: {', '.join(class_names)}")
