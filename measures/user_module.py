"""Import a module of the user's by dotted name or by path to a ``.py`` file (``SRRBENCH_MEASURES``, ``--model``).

A module that is not found or raises while importing is bad input, whatever it raises: a ``UsageError`` naming the
module, the option or environment variable that named it, and the original error's type and message.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path

from zoo.errors import MissingInputError, UserModuleError


def _is_file_name(name: str) -> bool:
    """A path to a file (``my_ext.py``, ``dir/my_ext``), not a dotted module name."""
    return name.endswith(".py") or "/" in name or "\\" in name


def import_user_module(name: str, source: str, file_module: str | None = None) -> types.ModuleType:
    """The module ``name``: a path to a ``.py`` file, or a dotted name on the Python path; ``source`` (the option or
    environment variable that named it) begins every error message.

    As ``python`` itself would, the working directory (for a dotted name) or the file's directory (for a file) is
    searched too, so that a module in the current directory is found without PYTHONPATH=. and a module can import
    its siblings; appended to ``sys.path``, so it never shadows a library. A file is imported under its stem, so
    ``my_ext.py`` and ``my_ext`` are one module (and one code fingerprint for the measures cache), or under
    ``file_module`` when given: a name of the caller's own, which a file imported later replaces.
    """
    path = Path(name).expanduser().resolve() if _is_file_name(name) else None
    if path is not None and not path.is_file():
        raise MissingInputError(f"{source}: no Python file {name} (looked for {path})")
    home = os.getcwd() if path is None else str(path.parent)
    if home not in sys.path:
        sys.path.append(home)
    if path is None:
        module_name = name
    else:
        module_name = file_module or path.stem
        loaded = sys.modules.get(module_name)
        if loaded is not None and file_module is None:
            if getattr(loaded, "__file__", None) and Path(loaded.__file__).resolve() == path:
                return loaded
            taken_by = getattr(loaded, "__file__", None) or "a built-in module"
            raise UserModuleError(f"{source}: cannot import {name} as module {module_name!r}: that name is already "
                                  f"taken by {taken_by}; rename the file")
    try:
        if path is None:
            return importlib.import_module(name)
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses, pickling and the code fingerprints look modules up here
        spec.loader.exec_module(module)
        return module
    except Exception as err:  # the user's module failing to import is bad input, whatever it raises
        if path is not None:
            sys.modules.pop(module_name, None)
        hint = ""
        not_found = isinstance(err, ModuleNotFoundError) and err.name is not None
        if not_found and (err.name == name or name.startswith(err.name + ".")):  # the module itself, not one it imports
            hint = (f"; give a module on the Python path or in the current directory ({os.getcwd()}), or a path to "
                    f"a .py file")
        raise UserModuleError(f"{source}: cannot import {name}: {err.__class__.__name__}: {err}{hint}") from err
