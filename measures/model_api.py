"""``measures.compute(model, x, y, ...)``: the registered measures of any ``torch.nn.Module`` classifier.

A measure runs when the model and the call meet its registered needs (``registry.register_measure``): CRATE's
internals (``needs_crate``: the SRR family, CRATE's path-norm rules), the initial weights (``needs_init``), data
(``needs_data``), the training log (``needs_training_log``). Every other family works on any classifier: norms,
spectral (``Linear`` and bare 2-D weights, convolutions as (out, in·k) matrices: ``context.weight_matrices``),
margins, PAC-Bayes, sharpness, calibration, heavy-tail, input sensitivity, gradient noise. A measure left out is
listed with its reason, never dropped silently. Inputs are checked first, so a mismatch of model, data and
initial weights is one ``BadValueError`` naming it, not an error deep inside a measure.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from torch import nn

from zoo.errors import BadValueError
from zoo.models import CRATE

from .compute import draw_sample, evaluate_measures
from .context import MeasureContext, MeasureOptions
from .registry import Measure, get_measure, resolve_names


def compute(model: nn.Module, x: torch.Tensor | None, y: torch.Tensor | None, init_state: dict | None = None,
            names=None, options: MeasureOptions | dict | None = None, *, n_train: int | None = None,
            training_log: list[dict] | None = None) -> pd.DataFrame:
    """Measures of any ``torch.nn.Module`` classifier, as a one-row table.

    Parameters
    ----------
    model : a classifier: ``model(x)`` gives logits (N, classes) with classes > max(y). Put in eval mode; never
        changed otherwise.
    x, y : its training set (or the split to measure on): inputs (N, ...) and integer labels (N,). The measures'
        sample is ``options.n_samples`` of them drawn with ``options.seed`` (all if fewer). ``None, None`` for
        weight-only measures.
    init_state : the model's state_dict at initialisation, for the ``needs_init`` measures (distances from init,
        the -init bounds); same keys and shapes as ``model.state_dict()``.
    names : measure names or patterns (``'sharp*'``); None: every registered measure.
    options : ``MeasureOptions`` or a dict of its fields.
    n_train : m of the PAC-Bayes and sharpness bounds' log(m/σ′) terms; default ``len(x)``.
    training_log : rows with ``step`` and ``train_loss`` for the optimisation-speed measures.

    Returns
    -------
    One row, one column per measure computed. A measure the model or the call cannot serve (a CRATE-only measure on
    another model, an init measure without ``init_state``, a data measure without data, a log measure without a
    log) is left out and listed with its reason in ``table.attrs["skipped"]`` ({name: reason}) when a pattern (or
    ``names=None``) selected it; asking for it by its exact name raises ``BadValueError`` with the reason. A
    measure that fails on the model is NaN, its error in ``table.attrs["errors"]`` ({name: error}).

    Raises
    ------
    BadValueError : x/y shapes that do not match, a model whose output is not (N, classes > max(y)) logits, an
        input shape the model rejects, an ``init_state`` of other keys or shapes, an exactly named measure that
        cannot run, ``n_train`` < 1.

    Examples
    --------
    >>> mlp = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> row = compute(mlp, torch.randn(8, 4), torch.tensor([0, 1] * 4), names=["num-params", "srr*"])
    >>> row["num-params"].item(), sorted(row.attrs["skipped"])
    (23.0, ['srr', 'srr-last'])
    """
    if not isinstance(model, nn.Module):
        hint = " (a stored run is measured by measures.compute_run(run_dir))" if isinstance(model, (str, Path)) else ""
        raise BadValueError(f"compute() takes a torch.nn.Module, got {type(model).__name__}{hint}")
    opts = options if isinstance(options, MeasureOptions) else MeasureOptions.from_dict(options or {})
    names = [names] if isinstance(names, str) else names
    requested = resolve_names(names)
    if n_train is not None and not (isinstance(n_train, int) and n_train >= 1):
        raise BadValueError(f"n_train must be a positive int (the training-set size m), got {n_train!r}")
    x, y = check_sample(x, y)
    check_init_state(model, init_state)
    sx, sy = draw_sample(x, y, opts) if x is not None else (None, None)
    ctx = MeasureContext(model=model, init_state=init_state, x=sx, y=sy,
                         n_train=n_train if n_train is not None else (len(x) if x is not None else None),
                         options=opts, training_log=training_log)
    if x is not None:
        check_classifier(model, x, y)
    skipped = {n: reason for n in requested if (reason := unmet_need(get_measure(n), ctx)) is not None}
    named = [n for n in skipped if names is not None and n in names]
    if named:
        raise BadValueError("; ".join(f"measure {n!r} cannot be computed here: it {skipped[n]}" for n in named))
    results = evaluate_measures(ctx, [n for n in requested if n not in skipped])
    table = pd.DataFrame([{name: r["value"] for name, r in results.items()}])
    table.attrs["skipped"] = skipped
    table.attrs["errors"] = {name: r["error"] for name, r in results.items() if r["error"]}
    return table


def check_sample(x, y) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(x, y) as tensors, y as int64 labels; ``BadValueError`` naming what does not fit."""
    if x is None and y is None:
        return None, None
    if x is None or y is None:
        raise BadValueError(f"give both x and y or neither; got x={'None' if x is None else 'a tensor'}, "
                            f"y={'None' if y is None else 'a tensor'}")
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.ndim < 1 or len(x) == 0:
        raise BadValueError(f"x must hold at least one sample along its first dimension, got shape {tuple(x.shape)}")
    if y.ndim != 1 or len(y) != len(x):
        raise BadValueError(f"y must be labels of shape ({len(x)},) to match x of shape {tuple(x.shape)}, got shape "
                            f"{tuple(y.shape)}")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool or int(y.min()) < 0:
        raise BadValueError(f"y must be non-negative integer class labels, got dtype {y.dtype} with minimum "
                            f"{y.min().item()}")
    return x, y.to(torch.long)


def check_init_state(model: nn.Module, init_state: dict | None) -> None:
    """``BadValueError`` unless ``init_state`` is None or has exactly the keys and shapes of the model's."""
    if init_state is None:
        return
    problems = state_dict_mismatch(model.state_dict(), init_state)
    if problems:
        raise BadValueError(f"init_state does not fit the model ({type(model).__name__}): {problems}")


def state_dict_mismatch(expected: dict, given: dict, shown: int = 5) -> str:
    """'' when ``given`` has the keys and tensor shapes of ``expected``; else the missing, unexpected and misshaped
    keys (the first ``shown`` of each)."""
    def listed(what, keys):
        keys = list(keys)
        return f"{what} {', '.join(keys[:shown])}{f' (+{len(keys) - shown} more)' if len(keys) > shown else ''}"
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    misshaped = [f"{k} {tuple(given[k].shape) if isinstance(given[k], torch.Tensor) else type(given[k]).__name__}"
                 f" != {tuple(v.shape)}" for k, v in expected.items()
                 if k in given and not (isinstance(given[k], torch.Tensor) and given[k].shape == v.shape)]
    return "; ".join(listed(what, keys) for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                                         ("misshaped", misshaped)) if keys)


def check_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """``BadValueError`` unless ``model`` maps two samples of x to logits (2, classes) with classes > max(y)."""
    name = type(model).__name__
    try:
        with torch.no_grad():
            out = model(x[:2])
    except Exception as err:  # any failure of the user's forward on these inputs is a mismatch of model and data
        raise BadValueError(f"the model ({name}) rejects inputs of shape {tuple(x.shape[1:])} per sample: "
                            f"{err.__class__.__name__}: {next(iter(str(err).splitlines()), '')}") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or len(out) != len(x[:2]):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise BadValueError(f"the model ({name}) is not a classifier: for {len(x[:2])} inputs it returns {shape}, "
                            f"not logits of shape ({len(x[:2])}, classes)")
    classes, top = out.shape[1], int(y.max())
    if classes < 2 or classes <= top:
        raise BadValueError(f"the model ({name}) gives {classes} logit(s) per input, but the labels go up to {top}: "
                            f"a classifier of these data needs at least {max(2, top + 1)}")


def unmet_need(measure: Measure, ctx: MeasureContext) -> str | None:
    """Why ``measure`` cannot run in ``ctx`` (a need of its registration that the model or the context lacks), or
    None when it can."""
    if measure.needs_crate and not isinstance(ctx.model, CRATE):
        return (f"reads CRATE's internals (layer features, subspaces or CRATE's path-norm rules); the model is a "
                f"{type(ctx.model).__name__}")
    if measure.needs_init and ctx.init_state is None:
        return "needs the initial weights (init_state=, or --init-checkpoint)"
    if measure.needs_data and ctx.x is None:
        return "needs data (x, y)"
    if measure.needs_training_log and ctx.training_log is None:
        return "needs the training log (training CE per step), which only a stored run has"
    return None
