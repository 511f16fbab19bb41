"""Exceptions that mark the boundary between a user's mistake and a failure.

The command line turns :class:`UsageError` (and its subclasses) into one line on
stderr and exit status 2, with no traceback. Anything else is a failure of
imgclf or of the machine and exits with status 1.
"""

from __future__ import annotations

from collections.abc import Iterable


class UsageError(ValueError):
    """A value the user gave (flag, YAML key, file, folder) is not usable.

    The message is one sentence that names the value, says what was expected,
    and lists the valid choices where there is a finite set of them.
    """


class DataNotFoundError(UsageError):
    """A data set's files are missing and could not be downloaded."""


class ExportMismatchError(RuntimeError):
    """An exported model's logits differ from PyTorch's by more than the tolerance."""


def unknown_choice(kind: str, value: object, choices: Iterable[str]) -> UsageError:
    """Build the standard error for a name that is not one of ``choices``.

    Args:
        kind: What the value names, e.g. ``"dataset"`` or ``"attack"``.
        value: The value the user gave.
        choices: Every valid name.

    Returns:
        A :class:`UsageError` whose message lists the valid names, sorted.
    """
    listed = ", ".join(sorted(choices))
    return UsageError(f"unknown {kind} {value!r}; valid choices: {listed}")
