"""Which models enter the analysis, which hyperparameters are its axes, and which models are seed replicates.

- ``select_models``: finished runs that reached the CE target (Jiang et al.'s protocol), with counts of the rest.
- ``DEFAULT_AXES`` / ``present_axes``: the candidate hyperparameter axes; a zoo without some of them still works.
- ``configuration_codes``: one code per configuration (every hyperparameter but the seed); models sharing a code
  are replicates, and the bootstrap resamples configurations, then seeds within them.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from .stats import joint_codes, level_codes

__all__ = ["DEFAULT_AXES", "SEED", "CONFIGURATION_COLUMNS", "select_models", "present_axes", "configuration_codes"]

# every hyperparameter that may vary inside a width table (seed and width are not axes)
DEFAULT_AXES = ("variant", "lr", "batch_size", "dropout", "weight_decay", "n_train", "depth")
SEED = "seed"
# what makes two runs the same configuration, besides the axes (constant inside a width table, but kept explicit)
CONFIGURATION_COLUMNS = ("width", "dataset")
_TRUE_STRINGS = {"true", "1", "yes", "y", "t"}


def _as_bool(values: pd.Series) -> pd.Series:
    """reached_target as read from CSV: bool, 0/1, 'True'/'False' or empty (pending runs) -> bool, empty = False."""
    if values.dtype == bool:
        return values
    return values.map(lambda v: str(v).strip().lower() in _TRUE_STRINGS if pd.notna(v) else False).astype(bool)


def select_models(models: pd.DataFrame, include_unreached: bool = False) -> tuple[pd.DataFrame, dict]:
    """The models an analysis uses, and how many were left out and why.

    Jiang et al.'s protocol compares models trained to the same training cross-entropy, so by default only runs
    with ``status == "done"`` that reached the CE target are kept. A configuration may then keep fewer seeds.

    Parameters
    ----------
    models : pandas.DataFrame
        One row per run with at least ``status`` and ``reached_target`` columns (as in a zoo's ``models.csv``).
    include_unreached : bool, default False
        Keep finished runs that stopped at ``max_epochs`` above the target too.

    Returns
    -------
    (pandas.DataFrame, dict)
        The kept rows (original index), and counts: ``total``; ``by_status`` (runs per status); ``reached_target``
        (finished runs that reached the target); ``excluded`` (``not_reached`` and one entry per status other than
        done, e.g. ``diverged``, ``failed``, ``pending``); ``used``; ``include_unreached``.

    Examples
    --------
    >>> models = pd.DataFrame({"status": ["done", "done", "diverged", "failed"],
    ...                        "reached_target": [True, False, False, False]})
    >>> kept, counts = select_models(models)
    >>> len(kept), counts["excluded"]
    (1, {'not_reached': 1, 'diverged': 1, 'failed': 1})
    """
    for column in ("status", "reached_target"):
        if column not in models.columns:
            raise KeyError(f"column {column!r} not in the models table; available: {list(models.columns)}")
    status = models["status"].fillna("pending").astype(str)
    reached = _as_bool(models["reached_target"])
    done = status == "done"
    keep = done if include_unreached else done & reached
    excluded = {"not_reached": 0 if include_unreached else int((done & ~reached).sum())}
    excluded.update({s: int(n) for s, n in status[~done].value_counts().sort_index().items()})
    counts = {
        "total": int(len(models)),
        "by_status": {s: int(n) for s, n in status.value_counts().sort_index().items()},
        "reached_target": int((done & reached).sum()),
        "excluded": excluded,
        "used": int(keep.sum()),
        "include_unreached": bool(include_unreached),
    }
    return models.loc[keep], counts


def present_axes(models: pd.DataFrame, axes: Sequence[str] | None = None) -> tuple[str, ...]:
    """The candidate axes: ``DEFAULT_AXES`` that are columns of ``models`` when ``axes`` is None; else ``axes``,
    which must all be columns (KeyError naming the missing ones)."""
    if axes is None:
        return tuple(a for a in DEFAULT_AXES if a in models.columns)
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    missing = [a for a in axes if a not in models.columns]
    if missing:
        raise KeyError(f"axis column(s) {missing} not in the models table; available: {list(models.columns)}")
    return axes


def configuration_codes(frame: pd.DataFrame, axes: Sequence[str]) -> np.ndarray:
    """One integer per row, equal for rows that differ only in the seed (and in nothing among ``axes`` and the
    ``CONFIGURATION_COLUMNS`` present). NaN is a value of its own.

    >>> configuration_codes(pd.DataFrame({"lr": [1, 1, 2], "seed": [0, 1, 0]}), ["lr"])
    array([0, 0, 1])
    """
    columns = [c for c in dict.fromkeys((*axes, *CONFIGURATION_COLUMNS)) if c in frame.columns and c != SEED]
    return joint_codes([level_codes(frame[c]) for c in columns], len(frame))
