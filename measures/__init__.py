"""Complexity measures: a registry and one module per family.

Importing the package imports every module in this folder, so a new measure is one decorated function in one new
file (see the README). ``SRRBENCH_MEASURES=mod1,path/to/mod2.py`` imports extra modules: dotted names on the path
or in the current directory, or ``.py`` files; one that does not import is a ``UserModuleError`` naming it (bad
input: exit 2 on the command line). A module of this folder that fails is a bug in it (exit 3, one line).

    >>> import measures
    >>> [m.name for m in measures.available("srr*")]
    ['srr', 'srr-last']
"""
import importlib
import os
import pkgutil

from .compute import compute_run, compute_zoo, describe, make_context
from .context import MeasureContext, MeasureOptions, weight_matrices
from .model_api import compute
from .registry import Measure, available, get_measure, register_measure, resolve_names, unregister_measure
from .user_module import import_user_module

_INFRASTRUCTURE = {"compute", "context", "registry", "layerwise", "model_api", "user_module"}
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module not in _INFRASTRUCTURE:
        importlib.import_module(f"{__name__}.{_module}")   # code: a failure here is a bug, reported as one
for _module in filter(None, (entry.strip() for entry in os.environ.get("SRRBENCH_MEASURES", "").split(","))):
    import_user_module(_module, "SRRBENCH_MEASURES")

__all__ = ["compute", "compute_run", "compute_zoo", "describe", "make_context", "MeasureContext", "MeasureOptions",
           "weight_matrices", "Measure", "available", "get_measure", "register_measure", "resolve_names",
           "unregister_measure"]
