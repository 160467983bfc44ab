"""Robust sign-error of a complexity measure (Dziugaite et al., NeurIPS 2020, "In search of robust measures of
generalization"; measure-formulas §8.11), with seeds as the randomness.

- An **environment** is a pair of configurations (c, c′) that differ in exactly one hyperparameter axis.
- Its **sign-error** is the probability, over one run (seed) of c and one run of c′ drawn independently and
  uniformly, that the measure orders the two runs' gaps wrongly: the mean over all |S_c|·|S_c′| cross pairs of
  models (a, b) of (1 − sign(μ_a − μ_b)·sign(g_a − g_b))/2, so a discordant pair counts 1, a concordant one 0,
  and a pair tied in the measure or in the gap ½.
- A measure is summarised per axis (the environments that differ in that axis) and overall by the mean, the 90%
  quantile (numpy's linear interpolation) and the maximum over environments: lower is better, ½ is chance.

This is the unweighted form the issue asks for: §8.11's pair weights max(0, ψ(|Δg|) − ½), which need the test-set
size, and its ESS ≥ 12 filter are not applied.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from .bootstrap import pair_signs
from .stats import joint_codes, level_codes

__all__ = ["SIGN_ERROR_STATISTICS", "environment_sign_errors", "summarize_sign_errors"]

SIGN_ERROR_STATISTICS = ("sign_error_mean", "sign_error_q90", "sign_error_max")


def environment_sign_errors(frame: pd.DataFrame, measure: str, gap: str, axes: Sequence[str]) -> pd.DataFrame:
    """The sign-error of ``measure`` in every environment of the table.

    Parameters
    ----------
    frame : pandas.DataFrame
        One row per model (any number of seeds per configuration); rows with a NaN measure or gap are dropped.
    measure, gap : str
        Columns of the measure and of the gap.
    axes : sequence of str
        The hyperparameter axes; a configuration is a tuple of their values (NaN a value of its own).

    Returns
    -------
    pandas.DataFrame
        One row per environment: ``axis`` (the one it varies), ``config_a``, ``config_b`` (configuration codes,
        a < b), ``n_pairs`` (cross pairs of models) and ``sign_error``.

    Examples
    --------
    lr 1 vs 2 at one batch size; two seeds each: of the 4 cross pairs, one is ordered wrongly.

    >>> df = pd.DataFrame({"lr": [1, 1, 2, 2], "mu": [1.0, 3.0, 2.0, 4.0], "gap": [1.0, 2.0, 3.0, 4.0]})
    >>> environment_sign_errors(df, "mu", "gap", ["lr"])
      axis  config_a  config_b  n_pairs  sign_error
    0   lr         0         1        4        0.25
    """
    columns = ["axis", "config_a", "config_b", "n_pairs", "sign_error"]
    table = frame.loc[frame[measure].notna() & frame[gap].notna()]
    n = len(table)
    if n < 2 or not axes:
        return pd.DataFrame(columns=columns)
    codes = {axis: level_codes(table[axis]) for axis in axes}
    config = joint_codes([codes[a] for a in axes], n)
    error = (1 - pair_signs(table[measure]) * pair_signs(table[gap])) / 2
    first, second = np.triu_indices(n, 1)
    frames = []
    for axis in axes:
        other = joint_codes([codes[a] for a in axes if a != axis], n)
        keep = (other[first] == other[second]) & (codes[axis][first] != codes[axis][second])
        a, b = config[first[keep]], config[second[keep]]
        low, high = np.minimum(a, b), np.maximum(a, b)
        environments, index = np.unique(np.stack([low, high], axis=1), axis=0, return_inverse=True)
        index = index.ravel()
        n_pairs = np.bincount(index, minlength=len(environments))
        total = np.bincount(index, weights=error[first[keep], second[keep]], minlength=len(environments))
        frames.append(pd.DataFrame({"axis": axis, "config_a": environments[:, 0], "config_b": environments[:, 1],
                                    "n_pairs": n_pairs, "sign_error": total / np.maximum(n_pairs, 1)}))
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def summarize_sign_errors(environments: pd.DataFrame, axes: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per axis and ``"all"``: ``sign_error_mean``, ``sign_error_q90``, ``sign_error_max`` over environments and
    ``n_environments``; NaN statistics where an axis has no environment."""
    summary = {}
    for axis in (*axes, "all"):
        values = environments["sign_error"] if axis == "all" else \
            environments.loc[environments["axis"] == axis, "sign_error"]
        values = values.to_numpy(dtype=float)
        if values.size:
            stats = (float(values.mean()), float(np.quantile(values, 0.9)), float(values.max()))
        else:
            stats = (math.nan,) * 3
        summary[axis] = {**dict(zip(SIGN_ERROR_STATISTICS, stats)), "n_environments": int(values.size)}
    return summary
