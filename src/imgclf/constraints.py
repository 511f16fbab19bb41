"""Constraints declared next to each setting, in the spirit of scikit-learn's parameter constraints.

A configuration field declares what values it accepts with :func:`setting`
(``epochs: int = setting(10, Interval(int, 1, None))``). One loop
(:func:`check_fields`) checks every declared field of a dataclass, one message
form names the field, the bad value and the valid range or choices, the CLI's
help shows the same description and default, and the tests draw invalid
values from :meth:`Constraint.invalid_values`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass, field
from typing import Any

from imgclf.errors import UsageError, unknown_choice


class Constraint:
    """What one setting accepts. Subclasses define :meth:`accepts`, :meth:`describe` and :meth:`invalid_values`."""

    def accepts(self, value: Any) -> bool:
        """True when ``value`` (already of the field's type) is valid."""
        raise NotImplementedError

    def describe(self) -> str:
        """The valid values in words, e.g. ``"an integer >= 1"``."""
        raise NotImplementedError

    def invalid_values(self) -> list[Any]:
        """Values of the field's type that this constraint refuses (for tests)."""
        raise NotImplementedError

    def error(self, where: str, value: Any) -> UsageError:
        """The one message form: the field, the bad value, and what is valid."""
        return UsageError(f"{where} must be {self.describe()}, got {value!r}")

    def check(self, where: str, value: Any) -> None:
        """Raise :meth:`error` unless ``value`` is None or accepted.

        Raises:
            UsageError: Naming ``where``, ``value`` and :meth:`describe`.
        """
        if value is not None and not self.accepts(value):
            raise self.error(where, value)


@dataclass(frozen=True)
class Interval(Constraint):
    """A number between ``low`` and ``high`` (None: unbounded), ends included as ``closed`` says.

    Float values must also be finite (NaN and infinity are refused).

    Args:
        kind: ``int`` or ``float``.
        low, high: The bounds, or None.
        closed: ``"both"``, ``"left"``, ``"right"`` or ``"neither"``: which bounds are allowed values.
    """

    kind: type
    low: float | None
    high: float | None
    closed: str = "both"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (value == self.low and self.closed in ("right", "neither"))):
            return False
        return not (self.high is not None
                    and (value > self.high or (value == self.high and self.closed in ("left", "neither"))))

    def describe(self) -> str:
        noun = "an integer" if self.kind is int else "a number"
        low_in, high_in = self.closed in ("both", "left"), self.closed in ("both", "right")
        low, high = (None if v is None else str(int(v)) if self.kind is int else f"{v:g}"
                     for v in (self.low, self.high))
        if low is not None and high is not None:
            return f"{noun} in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"
        if low is not None:
            return f"{noun} {'>=' if low_in else '>'} {low}"
        if high is not None:
            return f"{noun} {'<=' if high_in else '<'} {high}"
        return noun

    def invalid_values(self) -> list[Any]:
        step = 1 if self.kind is int else 0.5
        values: list[Any] = []
        if self.low is not None:
            values.append(self.kind(self.low - step))
            if self.closed in ("right", "neither"):
                values.append(self.kind(self.low))
        if self.high is not None:
            values.append(self.kind(self.high + step))
            if self.closed in ("left", "neither"):
                values.append(self.kind(self.high))
        if self.kind is float:
            values.append(math.nan)
        return values


@dataclass(frozen=True)
class Options(Constraint):
    """One of a set of choices (or, for a list-valued field, every item one of them).

    Args:
        noun: What a value names, for the message: ``"optimizer"``, ``"attack"``.
        choices: The valid values, or a callable returning them (a registry read when checked).
        each: The field is a list and every item must be a choice (and the list not empty).
    """

    noun: str
    choices: tuple[Any, ...] | Callable[[], Iterable[Any]]
    each: bool = False

    def valid(self) -> tuple[Any, ...]:
        """The choices now (a registry may have grown)."""
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def accepts(self, value: Any) -> bool:
        if self.each:
            return bool(value) and all(item in self.valid() for item in value)
        return value in self.valid()

    def describe(self) -> str:
        return ("one or more of " if self.each else "one of ") + ", ".join(str(c) for c in self.valid())

    def error(self, where: str, value: Any) -> UsageError:
        listed = ", ".join(sorted(str(c) for c in self.valid()))
        if self.each and not value:
            return UsageError(f"{where} is empty; valid choices: {listed}")
        bad = [item for item in value if item not in self.valid()][0] if self.each else value
        return unknown_choice(f"{self.noun} ({where})", bad, [str(c) for c in self.valid()])

    def invalid_values(self) -> list[Any]:
        wrong = "not-a-choice" if isinstance(self.valid()[0], str) else -7
        return [[wrong], []] if self.each else [wrong]


@dataclass(frozen=True)
class CountOrAll(Constraint):
    """A positive integer up to ``maximum``, or ``"all"``."""

    maximum: int | None = None

    def accepts(self, value: Any) -> bool:
        return value == "all" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1
                                  and (self.maximum is None or value <= self.maximum))

    def describe(self) -> str:
        return ("a positive integer or 'all'" if self.maximum is None
                else f"a positive integer up to {self.maximum:,} or 'all'")

    def invalid_values(self) -> list[Any]:
        return [0, -3, "some", *([self.maximum + 1] if self.maximum is not None else [])]


@dataclass(frozen=True)
class OrWord(Constraint):
    """What ``inner`` accepts, or one word: ``lr: float | str = setting(2e-3, OrWord(Interval(...), "auto"))``."""

    inner: Constraint
    word: str

    def accepts(self, value: Any) -> bool:
        return value == self.word if isinstance(value, str) else self.inner.accepts(value)

    def describe(self) -> str:
        return f"{self.inner.describe()}, or {self.word!r}"

    def invalid_values(self) -> list[Any]:
        return [*self.inner.invalid_values(), f"{self.word}-not"]


def setting(default: Any = MISSING, constraint: Constraint | None = None, *,
            default_factory: Callable[[], Any] | Any = MISSING) -> Any:
    """A dataclass field with its constraint: ``epochs: int = setting(10, Interval(int, 1, None))``."""
    metadata = {"constraint": constraint} if constraint is not None else {}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def check_fields(instance: Any, section: str) -> None:
    """Check every declared field of the dataclass ``instance``; ``section`` prefixes the names.

    Raises:
        UsageError: On the first invalid value, in declaration order.
    """
    for f in dataclasses.fields(instance):
        constraint = f.metadata.get("constraint")
        if constraint is not None:
            where = f"{section}.{f.name}" if section else f.name
            constraint.check(where, getattr(instance, f.name))


def describe_field(cls: type, name: str) -> str:
    """``"an integer >= 1; default 10"``: a field's constraint and default, for help texts."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            parts = []
            constraint = f.metadata.get("constraint")
            if constraint is not None:
                parts.append(constraint.describe())
            default = f.default if f.default is not MISSING else (
                f.default_factory() if f.default_factory is not MISSING else None)
            if isinstance(default, bool):
                parts.append(f"default {'on' if default else 'off'}")
            elif default is not None:
                shown = ",".join(map(str, default)) if isinstance(default, list) else \
                    f"{default:g}" if isinstance(default, float) else str(default)
                parts.append(f"default {shown}")
            return "; ".join(parts)
    raise KeyError(name)


def resolve_typed_options(kind: str, name: str, defaults: dict[str, Any], given: dict[str, Any] | None
                          ) -> dict[str, Any]:
    """Keyword hyperparameters of a model or classifier: ``defaults`` updated with ``given``.

    A value must have its default's type; an int is accepted for a float, a list
    for a tuple (and one int for a tuple of ints); a default of None accepts anything.

    Args:
        kind: What the options belong to, for messages (``"model"``, ``"classifier"``).
        name: Its registered name.

    Raises:
        UsageError: On an unknown key (listing the valid ones) or a value of the wrong type.
    """
    resolved = dict(defaults)
    for key, value in (given or {}).items():
        if key not in defaults:
            valid = ", ".join(defaults) or "none"
            raise UsageError(f"unknown option {key!r} for {kind} {name!r}; valid options: {valid}")
        default = defaults[key]
        if default is None or (isinstance(value, type(default)) and not isinstance(default, tuple)):
            resolved[key] = value
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            resolved[key] = float(value)
        elif isinstance(default, tuple) and isinstance(value, list | tuple):
            resolved[key] = tuple(value)
        elif isinstance(default, tuple) and isinstance(value, int) and not isinstance(value, bool):
            resolved[key] = (value,)
        else:
            raise UsageError(f"{kind} option {key}={value!r} for {name!r} must be of type {type(default).__name__} "
                             f"(default {default!r})")
        if kind == "model":  # (a classifier's estimator checks its own options, with its own words)
            _check_sign(kind, name, key, resolved[key], default)
    return resolved


def _check_sign(kind: str, name: str, key: str, value: Any, default: Any) -> None:
    """A count whose default is positive (filters, widths, units, heads) must stay positive, and a number whose
    default is not negative (a dropout rate, a scale) must stay finite and not negative.

    Raises:
        UsageError: Naming the option, the value and what is valid.
    """
    counts = value if isinstance(default, tuple) and isinstance(value, tuple) else (value,)
    for item in counts:
        if isinstance(item, bool) or not isinstance(item, int | float):
            continue
        if isinstance(item, float) and not math.isfinite(item):
            raise UsageError(f"{kind} option {key}={value!r} for {name!r} must be a finite number")
        positive = isinstance(item, int) and isinstance(default, int | tuple) and not isinstance(default, bool) and \
            all(isinstance(d, int) and d >= 1 for d in (default if isinstance(default, tuple) else (default,)))
        if positive and item < 1:
            raise UsageError(f"{kind} option {key}={value!r} for {name!r} must be a positive integer (default "
                             f"{default!r})")
        if item < 0 and isinstance(default, int | float) and not isinstance(default, bool) and default >= 0:
            raise UsageError(f"{kind} option {key}={value!r} for {name!r} must be >= 0 (default {default!r})")
