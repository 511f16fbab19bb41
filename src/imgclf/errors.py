"""Exceptions that mark the boundary between a user's mistake and a failure.

The command line turns :class:`UsageError` (and its subclasses) into one line on
stderr and exit status 2, with no traceback. Anything else is a failure of
imgclf or of the machine and exits with status 1.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UsageError(ValueError):
    """A value the user gave (flag, YAML key, file, folder) is not usable.

    The message is one sentence that names the value, says what was expected,
    and lists the valid choices where there is a finite set of them.
    """


class DataNotFoundError(UsageError):
    """A data set's files are missing and could not be downloaded."""


class TrainingDivergedError(UsageError):
    """The training loss became NaN or infinite (settings such as a learning rate too high for
    the model); the run folder keeps the last epoch that trained cleanly."""


class ExportMismatchError(RuntimeError):
    """An exported model's logits differ from PyTorch's by more than the tolerance."""


def unknown_choice(kind: str, value: object, choices: Iterable[str]) -> UsageError:
    """Build the standard error for a name that is not one of ``choices``.

    Args:
        kind: What the value names, e.g. ``"dataset"`` or ``"attack"``.
        value: The value the user gave.
        choices: Every valid name.

    Returns:
        A :class:`UsageError` whose message lists the valid names, sorted, after
        the closest one when a name is close to what was given (``did you mean``).
    """
    names = sorted(str(choice) for choice in choices)
    close = difflib.get_close_matches(str(value), names, n=1, cutoff=0.6) if isinstance(value, str) else []
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return UsageError(f"unknown {kind} {value!r}{hint}; valid choices: {', '.join(names)}")


def first_line(error: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message, at most ``limit`` characters (its type where it has
    none): what a one-line error shows of a library's long message."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__
