"""The measure registry: ``@register_measure`` on a plain function ``f(ctx) -> float``.

Adding a complexity measure is one decorated function in one file; nothing else changes. Each entry keeps only a
name, a family, a direction, what it needs from the model (data, CRATE's internals, the initial weights, the
training log), a one-line description, a version and the function. Registering a name twice raises.

The needs let ``measures.compute(model, x, y, ...)`` measure any ``torch.nn.Module`` classifier: a measure whose
need the model or the call cannot meet is left out with its reason (``measures.model_api.unmet_need``), never
computed into a meaningless number nor dropped silently.

A measure returns one float. A per-layer curve is not a measure (the tables rank scalars): it is computed by
``measures.layerwise``; a function annotated to return an array is refused here, and a measure that returns an
array anyway gets NaN with that reason in ``measures_errors.log``.

Cached values are keyed on ``code_fingerprint``: a hash of the source of the measure's module and of every project
module it reaches through the names it imports (helpers such as ``measures.margin``, ``measures.context``, the
model code for path-norm) and of ``measures.context``, whose code every measure runs through ``ctx``, so editing a
helper recomputes exactly the measures whose modules use it.
"""
from __future__ import annotations

import fnmatch
import hashlib
import inspect
import os
import site
import sys
import sysconfig
import types
from dataclasses import dataclass
from typing import Callable

from zoo.errors import UnknownNameError


@dataclass(frozen=True)
class Measure:
    name: str
    fn: Callable
    family: str
    needs_data: bool          # reads training samples (margins, features, sharpness), not only the weights
    needs_crate: bool         # reads CRATE's internals (ctx.features(), subspaces, CRATE's path-norm rules)
    needs_init: bool          # reads the initial weights (ctx.init_state: distances from init, the *-init bounds)
    needs_training_log: bool  # reads ctx.training_log (optimisation speed)
    higher_is_complex: bool   # True when a larger value should mean a larger generalization gap
    description: str
    version: int              # a manual salt of the cache key: bump it when something outside the hashed code
                              # changes the value (a library's behaviour, a data file); code edits need no bump
    module: str

    def __call__(self, ctx) -> float:
        return self.fn(ctx)


_REGISTRY: dict[str, Measure] = {}
# return annotations that say "not one float"; checked on the annotation's text so that string annotations
# (from __future__ import annotations) are caught as well
_ARRAY_ANNOTATIONS = ("ndarray", "Tensor", "list", "List", "Sequence", "tuple", "Tuple", "dict", "Dict")


def register_measure(name: str, *, family: str, needs_data: bool = False, needs_crate: bool = False,
                     needs_init: bool = False, needs_training_log: bool = False, higher_is_complex: bool = True,
                     description: str | None = None, version: int = 1):
    """Decorator: record ``fn`` as measure ``name``. The description defaults to the docstring's first line.

    ``needs_data``: the measure reads ``ctx.x, ctx.y``; ``needs_crate``: it reads CRATE's internals (it is left
    out for other models); ``needs_init``: it reads the initial weights; ``needs_training_log``: it reads
    ``ctx.training_log``. A model or call that lacks one of these gets the measure left out with the reason.
    """
    def decorate(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"measure {name!r} is already registered (by {_REGISTRY[name].module})")
        returns = inspect.signature(fn).return_annotation
        text = returns if isinstance(returns, str) else getattr(returns, "__name__", str(returns))
        if returns is not inspect.Signature.empty and any(word in str(text) for word in _ARRAY_ANNOTATIONS):
            raise ValueError(f"measure {name!r} is annotated to return {text}; a measure returns one float (the "
                             f"tables rank scalars). Register one measure per layer or aggregate the curve.")
        doc = description or next(iter((fn.__doc__ or "").strip().splitlines()), "")
        _REGISTRY[name] = Measure(name=name, fn=fn, family=family, needs_data=needs_data, needs_crate=needs_crate,
                                  needs_init=needs_init, needs_training_log=needs_training_log,
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
        raise UnknownNameError(f"unknown measure {name!r}; available: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def resolve_names(names) -> list[str]:
    """Expand names and wildcard patterns (``sharp*``) to registered names; an unknown name is an error."""
    if names is None:
        return list(_REGISTRY)
    out: list[str] = []
    for pattern in names:
        matched = [m.name for m in available(pattern)]
        if not matched:
            raise UnknownNameError(f"unknown measure {pattern!r}; available: {', '.join(_REGISTRY)}")
        out.extend(n for n in matched if n not in out)
    return out


# ---------------------------------------------------------------------------------------------------------
# Code fingerprints: the cache key of a measure's values

def _library_roots() -> tuple[str, ...]:
    paths = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths.update(site.getsitepackages() if hasattr(site, "getsitepackages") else ())
    paths.add(site.getusersitepackages())
    return tuple(os.path.realpath(p) + os.sep for p in paths if p)


_LIBRARY_ROOTS = _library_roots()
_OUR_PACKAGES = ("measures", "zoo")   # ours even when pip-installed into site-packages


def _is_project_module(module: types.ModuleType) -> bool:
    """True for this suite's modules and a user's own modules; False for the standard library and installed
    libraries (torch, numpy ...), whose versions are not part of the key (bump ``version`` if one matters)."""
    file = getattr(module, "__file__", None)
    if not file or not file.endswith(".py"):
        return False
    if module.__name__.split(".")[0] in _OUR_PACKAGES:
        return True
    return not os.path.realpath(file).startswith(_LIBRARY_ROOTS)


def _imported_modules(module: types.ModuleType) -> set[str]:
    """Names of the modules that ``module``'s globals come from: imported modules, functions and classes."""
    out = set()
    for value in vars(module).values():
        if isinstance(value, types.ModuleType):
            out.add(value.__name__)
        elif isinstance(value, (types.FunctionType, type)) and isinstance(getattr(value, "__module__", None), str):
            out.add(value.__module__)
    return out


def module_dependencies(*module_names: str) -> list[str]:
    """The named modules and every project module reachable through their globals, transitively, sorted."""
    seen, todo = set(), list(module_names)
    while todo:
        name = todo.pop()
        module = sys.modules.get(name)
        if name in seen or module is None or (name not in module_names and not _is_project_module(module)):
            continue
        seen.add(name)
        todo.extend(_imported_modules(module) - seen)
    return sorted(seen)


# every measure runs the context's code (features, weights, caches) whether or not its module imports it
_ALWAYS = "measures.context"


def code_fingerprint(measure: Measure) -> str:
    """sha256 of the measure's version and the source files of its module, of ``measures.context`` (every
    measure's ``ctx``) and of every project module these reach (``module_dependencies``).

    Equal fingerprints mean the measure would run the same project code, so a cached value may be served; any edit
    to its module or a helper module it uses (and nothing else) changes it.
    """
    return modules_fingerprint(measure.module, _ALWAYS, salt=f"{measure.name}\0{measure.version}",
                               code=measure.fn.__code__.co_code)


def modules_fingerprint(*module_names: str, salt: str = "", code: bytes = b"") -> str:
    """sha256 of ``salt`` and the source files of ``module_dependencies(*module_names)``; ``code`` stands in for
    a module without a file (defined interactively)."""
    digest = hashlib.sha256(f"{salt}\0".encode())
    for name in module_dependencies(*module_names):
        file = getattr(sys.modules[name], "__file__", None)
        digest.update(f"{name}\0".encode())
        if file and os.path.exists(file):
            with open(file, "rb") as f:
                digest.update(f.read())
        else:
            digest.update(code)
    return digest.hexdigest()
