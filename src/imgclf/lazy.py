"""Lazy exports: a package's public names that import their module on first use (PEP 562).

A package lists ``{module: names}``; ``from imgclf.attacks import pgd`` then imports
``imgclf.attacks.projected_gradient`` only when the name is first asked for, so that the
command line can parse and check its flags, and print its listings, without importing
torch. An exported name never equals a submodule's name (the import system would put the
submodule in its place).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, table: Mapping[str, tuple[str, ...]]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package`` for the names of ``table``.

    Args:
        package: The package's ``__name__``.
        table: ``{"package.module": ("name", ...)}``.

    Returns:
        ``(__getattr__, __dir__)``: assign both at the package's top level. A name, once
        loaded, is set on the package, so later lookups cost nothing.

    An exported name must not be a submodule's name (``tests/test_architecture.py`` checks).
    """
    where = {name: module for module, names in table.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__


def require_module(name: str, message: str) -> Any:
    """Import an optional dependency by name.

    Raises:
        UsageError: With ``message`` (which says what to install) if it is not installed.
    """
    from imgclf.errors import UsageError

    try:
        return importlib.import_module(name)
    except ImportError:
        raise UsageError(message) from None
