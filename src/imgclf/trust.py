"""The trust boundary: what imgclf will import or unpickle, and on whose word.

imgclf runs code of the user's only where the user names it in this call: ``--model py:FILE:CLASS`` on
the command line, or a ``py:`` model name given to the Python API. A ``py:`` source named by a file that
imgclf reads (a run folder's ``model.json`` or ``config.yaml``, a ``--config`` or sweep file) is refused
with one line that says which code it would import and how to allow it: ``--trust-code`` on the command
line, ``trust_code=True`` (or :func:`trust_code`) in Python. The same opt-in lets a ``.pt2`` file that
holds pickled payloads be loaded (:func:`imgclf.models.exported.check_pt2_archive`); without it such a
file is refused before ``torch.export.load`` sees it.

This module imports nothing heavy: the command line checks files against it before torch loads.
"""

from __future__ import annotations

from imgclf.errors import UsageError

_trusted: set[str] = set()
_trust_everything = False


def trust_code(name: str | None = None) -> None:
    """Allow, for the rest of this process, the ``py:`` model source ``name`` (the user named it), or with
    None every source and every pickled ``.pt2`` payload (``--trust-code``)."""
    global _trust_everything
    if name is None:
        _trust_everything = True
    else:
        _trusted.add(name)


def forget_trust() -> None:
    """Back to trusting nothing (for tests and long-lived processes that run several commands)."""
    global _trust_everything
    _trust_everything = False
    _trusted.clear()


def trusts_everything() -> bool:
    """Whether ``--trust-code`` (or ``trust_code()``) was given in this process."""
    return _trust_everything


def is_user_code(name: object) -> bool:
    """Whether a model name is a ``py:`` source: code imported and called when the model is built."""
    return isinstance(name, str) and name.startswith("py:")


def check_named_code(name: object, where: str, *, allowed: bool = False) -> None:
    """Refuse a ``py:`` model name read from a file unless the user trusted it in this call.

    Args:
        name: The model name the file gives.
        where: The file, in words (``"runs/x/model.json"``), for the message.
        allowed: An opt-in given with the call that reads the file (``trust_code=True``).

    Raises:
        UsageError: If ``name`` is a ``py:`` source that is neither allowed here nor trusted in this process;
            the message names the code and the opt-in.
    """
    if not is_user_code(name) or allowed or _trust_everything or name in _trusted:
        return
    raise UsageError(f"{where} names the Python code {name!r}, which imgclf would import and run; imgclf runs "
                     "code only where you name it yourself: pass --trust-code (Python: trust_code=True) if you "
                     "trust whoever made the file, or give --model yourself")
