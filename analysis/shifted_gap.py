"""The measures' Ψ on the i.i.d. gap and on the shifted gap, side by side, and whether the ranking changes.

``gap_loss`` is test CE − train CE; ``gap_shift`` is the same with the test images under the zoo's fixed shift
(``zoo.shift``). Nakai et al. (2026, "Revisiting generalization measures beyond IID") rank measures against the
gap under distribution shift and find that the rankings change; ``compare_gaps`` puts the two Ψ columns of the
long correlation tables (``correlations.measure_correlations``, one per gap, so one bootstrap for both) beside each
other and gives, per width, Kendall τ between the two rankings of the measures by Ψ.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .stats import kendall_tau

__all__ = ["IID_GAP", "SHIFTED_GAP", "GAP_PAIR", "GapComparison", "compare_gaps"]

IID_GAP, SHIFTED_GAP = "gap_loss", "gap_shift"
GAP_PAIR = (IID_GAP, SHIFTED_GAP)


@dataclass(frozen=True)
class GapComparison:
    """``table``: one row per width and measure with, for each gap g of the pair, ``Psi_<g>``, ``ci_low_<g>``,
    ``ci_high_<g>``, ``rank_<g>`` (1 = largest Ψ among the measures of that width; NaN Ψ unranked) and
    ``n_models_<g>``. ``agreement``: width -> Kendall τ-b between the two Ψ columns over the measures that have
    both (NaN when fewer than two do); ``n_measures``: width -> that number of measures."""
    table: pd.DataFrame
    agreement: dict
    n_measures: dict


def _psi_rows(correlations: pd.DataFrame, gap: str) -> pd.DataFrame:
    rows = correlations.loc[correlations["statistic"] == "Psi",
                            ["width", "measure", "value", "ci_low", "ci_high", "n_models"]]
    rows = rows.rename(columns={"value": f"Psi_{gap}", "ci_low": f"ci_low_{gap}", "ci_high": f"ci_high_{gap}",
                                "n_models": f"n_models_{gap}"})
    rows[f"rank_{gap}"] = rows.groupby("width")[f"Psi_{gap}"].rank(ascending=False, method="min")
    return rows


def compare_gaps(iid: pd.DataFrame, shifted: pd.DataFrame) -> GapComparison:
    """Ψ with its interval and rank on each gap, per width and measure, and the agreement of the two rankings.

    Parameters
    ----------
    iid, shifted : pandas.DataFrame
        Long correlation tables (``measure_correlations(...).table``) of the same models and measures against
        ``gap_loss`` and against ``gap_shift``; only their ``Psi`` rows are used.

    Returns
    -------
    GapComparison

    Examples
    --------
    >>> def long(psi):
    ...     return pd.DataFrame({"width": 8, "measure": list("abc"), "statistic": "Psi", "axis": "all",
    ...                          "value": psi, "ci_low": 0.0, "ci_high": 1.0, "n_models": 12})
    >>> result = compare_gaps(long([0.5, 0.3, 0.1]), long([0.2, 0.4, 0.0]))
    >>> result.table[["measure", "rank_gap_loss", "rank_gap_shift"]].values.tolist()
    [['a', 1.0, 2.0], ['b', 2.0, 1.0], ['c', 3.0, 3.0]]
    >>> round(result.agreement[8], 4)   # of the 3 pairs of measures, (a, b) swaps: (2 - 1) / 3
    0.3333
    """
    table = _psi_rows(iid, IID_GAP).merge(_psi_rows(shifted, SHIFTED_GAP), on=["width", "measure"], how="outer",
                                          sort=False)
    agreement, n_measures = {}, {}
    for width, rows in table.groupby("width", sort=True):
        both = rows[[f"Psi_{IID_GAP}", f"Psi_{SHIFTED_GAP}"]].dropna()
        n_measures[width] = len(both)
        agreement[width] = kendall_tau(both.iloc[:, 0], both.iloc[:, 1]) if len(both) >= 2 else np.nan
    return GapComparison(table.reset_index(drop=True), agreement, n_measures)
