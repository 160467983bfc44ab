"""analysis.comparisons: Holm's step-down on hand-made p-values and paired differences of hand-made replicates."""
import doctest

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from analysis import comparisons
from analysis.comparisons import COMPARISON_COLUMNS, holm_intervals, paired_comparisons
from analysis.correlations import Correlations


def test_docstring_examples_run():
    failures, tried = doctest.testmod(comparisons, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert tried >= 1 and failures == 0


def test_holm_stops_at_the_first_non_rejection():
    # p = 0 (se 0), 2Φ(−3) = 0.0027, 2Φ(−0.5) = 0.617, 1 (zero diff, se 0), untested (se NaN); m = 4:
    # 0 <= .05/4, 0.0027 <= .05/3, 0.617 > .05/2 -> stop: the last two are not resolved
    out = holm_intervals(np.array([3.0, 0.5, 2.0, 0.0, 1.0]), np.array([1.0, 1.0, 0.0, 0.0, np.nan]))
    assert out["resolved"].tolist() == [True, False, True, False, False]
    p = 2 * norm.sf([3.0, 0.5])
    assert out["p_holm"][:4] == pytest.approx([3 * p[0], 1.0, 0.0, 1.0])
    assert np.isnan(out["p_holm"][4]) and np.isnan(out["ci_low"][4])
    # the pair tested second of 4 gets the level .05/3; the unresolved one the level where Holm stopped, .05/2
    assert (out["ci_low"][0], out["ci_high"][0]) == pytest.approx((3 - norm.isf(0.05 / 6), 3 + norm.isf(0.05 / 6)))
    assert (out["ci_low"][1], out["ci_high"][1]) == pytest.approx((0.5 - norm.isf(0.05 / 4), 0.5 + norm.isf(0.05 / 4)))
    assert (out["ci_low"][2], out["ci_high"][2]) == (2.0, 2.0)


def test_resolved_is_exactly_an_interval_without_zero():
    rng = np.random.default_rng(0)
    diff, se = rng.normal(size=200), rng.uniform(0.1, 1.0, size=200)
    out = holm_intervals(diff, se)
    assert out["resolved"].any() and not out["resolved"].all()
    assert np.array_equal(out["resolved"], (out["ci_low"] > 0) | (out["ci_high"] < 0))


def _correlations():
    """One width, measures A, B, C with point values 0.5, 0.2, 0.5 and 4 replicates each (same for Ψ and τ)."""
    replicates = {"A": np.array([0.4, 0.6, 0.5, 0.5]), "B": np.array([0.1, 0.3, 0.2, 0.2]),
                  "C": np.array([0.5, 0.5, 0.6, 0.4])}
    rows = [{"width": 8, "measure": m, "statistic": s, "axis": "all", "value": v}
            for s in ("tau", "Psi") for m, v in (("A", 0.5), ("B", 0.2), ("C", 0.5))]
    table = pd.DataFrame(rows)
    table.attrs["settings"] = {"level": 0.95}
    return Correlations(table, {8: {m: {"tau": r, "Psi": r} for m, r in replicates.items()}})


def test_paired_comparisons_by_hand():
    out = paired_comparisons(_correlations())
    assert list(out.columns) == COMPARISON_COLUMNS and len(out) == 6
    psi = out.loc[out["statistic"] == "Psi"].set_index(["measure_a", "measure_b"])
    # A − B = 0.3 in every resample: se 0, resolved, interval the point
    assert psi.loc[("A", "B"), ["diff", "ci_low", "ci_high", "se"]].tolist() == pytest.approx([0.3, 0.3, 0.3, 0.0])
    # B − C replicates (−.4, −.2, −.4, −.2): se = sd = 0.11547; z = 2.598, p = 0.0094 <= .05/2: resolved
    se = np.std([-0.4, -0.2, -0.4, -0.2], ddof=1)
    half = norm.isf(0.05 / 4) * se
    row = psi.loc[("B", "C")]
    assert row["se"] == pytest.approx(se) and bool(row["resolved"])
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((-0.3 - half, -0.3 + half))
    assert row["p_holm"] == pytest.approx(2 * 2 * norm.sf(0.3 / se))
    # A − C = 0: not resolved, interval at the last level .05
    row = psi.loc[("A", "C")]
    assert not row["resolved"] and row["ci_high"] == pytest.approx(norm.isf(0.025) * se)
    assert out.loc[out["statistic"] == "tau", "diff"].tolist() == psi["diff"].tolist()


def test_measures_without_a_value_are_left_out():
    correlations = _correlations()
    table = correlations.table.copy()
    table.loc[table["measure"] == "C", "value"] = np.nan
    table.attrs["settings"] = {"level": 0.95}
    out = paired_comparisons(Correlations(table, correlations.replicates))
    assert set(zip(out["measure_a"], out["measure_b"])) == {("A", "B")}
