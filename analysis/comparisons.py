"""Paired comparisons: does measure A beat measure B on the same models?

For every width, every pair of measures and each of Ψ and τ, the difference A − B is bootstrapped on the same
resamples for both (``Correlations.replicates``: the replicates of every measure are computed once and
differenced). The interval is a normal one with the bootstrap standard error, diff ± z·se, and the multiple
comparisons of one width and statistic are controlled by **Holm's step-down procedure** at family-wise level
1 − ``level``: p = 2·(1 − Φ(|diff|/se)); sorted ascending, the k-th (0-based) of m is rejected when it and every
smaller p are ≤ α/(m − k). Each pair's interval uses the level at which Holm tested it (α/(m − k); for the pairs
after the first non-rejection, the level where Holm stopped), so ``resolved`` (Holm rejects "no difference") is
exactly "the interval excludes 0". A normal interval rather than a percentile one, because α/m for 1225 pairs
lies far beyond the reach of 200 replicates' quantiles.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import norm

from .correlations import Correlations

__all__ = ["COMPARISON_COLUMNS", "holm_intervals", "paired_comparisons"]

COMPARISON_COLUMNS = ["width", "measure_a", "measure_b", "statistic", "diff", "ci_low", "ci_high", "resolved",
                      "se", "p_holm"]


def holm_intervals(diff: np.ndarray, se: np.ndarray, level: float = 0.95) -> dict[str, np.ndarray]:
    """Holm-corrected normal intervals of m differences with standard errors ``se`` (see the module's notes).

    Differences with a NaN standard error are not tested (NaN interval, not resolved) and do not count in m. A
    zero standard error gives p = 0 for a non-zero difference (every resample agrees) and p = 1 for zero.

    Returns ``ci_low``, ``ci_high``, ``resolved`` and ``p_holm`` (Holm-adjusted p-values), each of shape (m,).

    Examples
    --------
    Two tests at α = 0.05: p = 0.0027 (z = 3) passes 0.025, p = 0.0455 (z = 2) passes 0.05.

    >>> out = holm_intervals(np.array([3.0, 2.0]), np.array([1.0, 1.0]))
    >>> out["resolved"].tolist(), np.round(out["p_holm"], 4).tolist()
    ([True, True], [0.0054, 0.0455])
    """
    diff, se = np.asarray(diff, dtype=float), np.asarray(se, dtype=float)
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    alpha = 1 - level
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(se > 0, 2 * norm.sf(np.abs(diff) / se), np.where(diff != 0, 0.0, 1.0))
    p = np.where(np.isfinite(se) & np.isfinite(diff), p, np.nan)
    tested = np.flatnonzero(np.isfinite(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = order.size
    ranks = np.arange(m)
    passes = p[order] <= alpha / (m - ranks)
    stop = int(np.argmin(passes)) if not passes.all() else m       # first non-rejection
    resolved = np.zeros(diff.size, dtype=bool)
    resolved[order[:stop]] = True
    test_level = np.full(diff.size, np.nan)
    test_level[order] = alpha / (m - np.minimum(ranks, stop))
    half = norm.isf(test_level / 2) * se
    p_holm = np.full(diff.size, np.nan)
    p_holm[order] = np.minimum(1.0, np.maximum.accumulate((m - ranks) * p[order]))
    return {"ci_low": diff - half, "ci_high": diff + half, "resolved": resolved, "p_holm": p_holm}


def paired_comparisons(correlations: Correlations, statistics: tuple[str, ...] = ("Psi", "tau"),
                       level: float | None = None) -> pd.DataFrame:
    """Every pair of measures of every width, for Ψ and τ: difference, Holm-corrected interval, resolved or not.

    Parameters
    ----------
    correlations : Correlations
        ``measure_correlations``' result (its table's point values and its paired replicates).
    statistics : tuple of str
        Which statistics to compare.
    level : float, optional
        Family-wise coverage; default the table's interval level.

    Returns
    -------
    pandas.DataFrame
        ``COMPARISON_COLUMNS``: one row per width, statistic and unordered pair (A before B in the table's measure
        order), ``diff`` = value(A) − value(B). Measures whose value is NaN are left out of that statistic.
    """
    table = correlations.table
    level = level if level is not None else table.attrs.get("settings", {}).get("level", 0.95)
    frames = []
    for width, by_measure in correlations.replicates.items():
        rows = table.loc[(table["width"] == width) & (table["axis"] == "all")]
        for statistic in statistics:
            points = rows.loc[rows["statistic"] == statistic].set_index("measure")["value"]
            names = [m for m in by_measure if m in points.index and np.isfinite(points[m])]
            if len(names) < 2:
                continue
            values = points.loc[names].to_numpy(dtype=float)
            reps = np.stack([by_measure[m][statistic] for m in names])            # (M, B)
            first, second = np.triu_indices(len(names), 1)
            differences = reps[first] - reps[second]                                # (P, B), same resamples
            finite = np.isfinite(differences)
            enough = finite.sum(axis=1) >= 2
            with np.errstate(invalid="ignore"):
                masked = np.where(finite, differences, np.nan)
                se = np.where(enough, np.nanstd(np.where(enough[:, None], masked, 0.0), axis=1, ddof=1), math.nan)
            diff = values[first] - values[second]
            holm = holm_intervals(diff, se, level)
            frames.append(pd.DataFrame({"width": width, "measure_a": np.array(names)[first],
                                        "measure_b": np.array(names)[second], "statistic": statistic,
                                        "diff": diff, "ci_low": holm["ci_low"], "ci_high": holm["ci_high"],
                                        "resolved": holm["resolved"], "se": se, "p_holm": holm["p_holm"]}))
    if not frames:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    return pd.concat(frames, ignore_index=True)[COMPARISON_COLUMNS]
