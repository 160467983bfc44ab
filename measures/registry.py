"""The measure registry: ``@register_measure`` on a plain function ``f(ctx) -> float`` (or a per-layer array).

Adding a complexity measure is one decorated function in one file; nothing else changes. Each entry keeps only a
name, a family, a direction, a one-line description, a version and the function. Registering a name twice raises.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Measure:
    name: str
    fn: Callable
    family: str
    needs_data: bool          # reads training samples (margins, features, sharpness), not only the weights
    higher_is_complex: bool   # True when a larger value should mean a larger generalization gap
    description: str
    version: int              # bump when the definition changes, so cached values are recomputed
    module: str

    def __call__(self, ctx) -> float | np.ndarray:
        return self.fn(ctx)


_REGISTRY: dict[str, Measure] = {}


def register_measure(name: str, *, family: str, needs_data: bool = False, higher_is_complex: bool = True,
                     description: str | None = None, version: int = 1):
    """Decorator: record ``fn`` as measure ``name``. The description defaults to the docstring's first line."""
    def decorate(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"measure {name!r} is already registered (by {_REGISTRY[name].module})")
        doc = description or next(iter((fn.__doc__ or "").strip().splitlines()), "")
        _REGISTRY[name] = Measure(name=name, fn=fn, family=family, needs_data=needs_data,
                                  higher_is_complex=higher_is_complex, description=doc, version=version,
                                  module=fn.__module__)
        return fn
    return decorate


def unregister_measure(name: str) -> None:
    """Remove a measure (for tests and interactive experiments)."""
    _REGISTRY.pop(name, None)


def available(pattern: str = "*") -> list[Measure]:
    """Registered measures whose name matches the shell-style ``pattern``, in registration order."""
    return [m for name, m in _REGISTRY.items() if fnmatch.fnmatchcase(name, pattern)]


def get_measure(name: str) -> Measure:
    if name not in _REGISTRY:
        raise KeyError(f"unknown measure {name!r}; available: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def resolve_names(names) -> list[str]:
    """Expand names and wildcard patterns (``sharp*``) to registered names; an unknown name is an error."""
    if names is None:
        return list(_REGISTRY)
    out: list[str] = []
    for pattern in names:
        matched = [m.name for m in available(pattern)]
        if not matched:
            raise KeyError(f"unknown measure {pattern!r}; available: {', '.join(_REGISTRY)}")
        out.extend(n for n in matched if n not in out)
    return out
