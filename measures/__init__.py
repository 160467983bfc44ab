"""Complexity measures: a registry and one module per family. Importing the package registers them all.

    >>> import measures
    >>> [m.name for m in measures.available("srr*")]
    ['srr', 'srr-last']
"""
from . import margin, norms, pathnorm, spectral, srr  # noqa: F401  (registration side effect)
from .compute import compute, compute_zoo, describe, make_context
from .context import MeasureContext, MeasureOptions, weight_matrices
from .registry import Measure, available, get_measure, register_measure, resolve_names, unregister_measure

__all__ = ["compute", "compute_zoo", "describe", "make_context", "MeasureContext", "MeasureOptions",
           "weight_matrices", "Measure", "available", "get_measure", "register_measure", "resolve_names",
           "unregister_measure"]
