"""The user's own code named by a ``py:`` model source: importing it, and finding it in a traceback.

Only code the user named in this call, or trusted (:mod:`imgclf.trust`), reaches :func:`import_user_module`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from imgclf.errors import UsageError, first_line


def import_user_module(module_name: str) -> Any:
    """Import the user's module by dotted name (the working directory is on the path, as for ``python -m``)
    or from a ``.py`` file (its folder goes on the path so that it can import its neighbours).

    Raises:
        UsageError: If the file or module does not exist or fails to import, with the error's first line.
    """
    try:
        if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
            path = Path(module_name).expanduser().resolve()
            if not path.is_file():
                raise UsageError(f"no Python file {module_name!r} (looked for {str(path)!r})")
            unique = "imgclf_user_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
            if unique in sys.modules:
                return sys.modules[unique]
            if str(path.parent) not in sys.path:
                sys.path.insert(0, str(path.parent))
            spec = importlib.util.spec_from_file_location(unique, path)
            if spec is None or spec.loader is None:
                raise UsageError(f"{module_name!r} cannot be imported as a Python module")
            module = importlib.util.module_from_spec(spec)
            sys.modules[unique] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[unique]
                raise
            USER_CODE_FILES.add(str(path))
            return module
        if os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())
        module = importlib.import_module(module_name)
        file = getattr(module, "__file__", None)
        if file:
            USER_CODE_FILES.add(str(Path(file).resolve()))
        return module
    except UsageError:
        raise
    except (Exception, SystemExit) as error:  # the user's module may raise anything while it is imported
        raise UsageError(f"cannot import {module_name!r} ({type(error).__name__}: {first_line(error)}); the "
                         "module must be importable here (put its folder on PYTHONPATH or give its .py file)") from None


#: The files of the user's modules imported in this process (``py:`` sources), for :func:`user_code_frame`.
USER_CODE_FILES: set[str] = set()


def user_code_frame(error: BaseException) -> str | None:
    """Where in the user's own code (a ``py:`` source's module) ``error`` was raised, as ``FILE, line N``, or
    None when no frame of its traceback is in such code."""
    import traceback

    inside = [frame for frame in traceback.extract_tb(error.__traceback__)
              if str(Path(frame.filename).resolve()) in USER_CODE_FILES]
    return f"{Path(inside[-1].filename).name}, line {inside[-1].lineno}" if inside else None
