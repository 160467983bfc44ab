"""Complexity measures: a registry and one module per family.

Importing the package imports every module in this folder, so a new measure is one decorated function in one new
file (see the README). ``SRRBENCH_MEASURES=mod1,mod2`` imports extra modules from elsewhere on the path.

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

_INFRASTRUCTURE = {"compute", "context", "registry", "layerwise", "model_api"}
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module not in _INFRASTRUCTURE:
        importlib.import_module(f"{__name__}.{_module}")
for _module in filter(None, os.environ.get("SRRBENCH_MEASURES", "").split(",")):
    importlib.import_module(_module.strip())

__all__ = ["compute", "compute_run", "compute_zoo", "describe", "make_context", "MeasureContext", "MeasureOptions",
           "weight_matrices", "Measure", "available", "get_measure", "register_measure", "resolve_names",
           "unregister_measure"]
