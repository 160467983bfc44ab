"""Facts about analysis.bootstrap: the draws (hierarchical and plain) and the percentile interval rule."""
import doctest
import math

import numpy as np
import pandas as pd
import pytest

from analysis import bootstrap
from analysis.bootstrap import (bootstrap_ci, draw_multiplicities, is_hierarchical, percentile_interval,
                                pair_signs, resample_replicates, tau_replicates)
from analysis.stats import kendall_tau


def test_docstring_examples_run():
    failures, tried = doctest.testmod(bootstrap, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert tried >= 3 and failures == 0


def test_hierarchical_draws_stay_inside_configurations():
    # configurations of 3, 1 and 2 models, listed out of order
    config = np.array([2, 0, 0, 1, 2, 0])
    members = {k: np.flatnonzero(config == k) for k in range(3)}
    counts = draw_multiplicities(400, 1, config)
    assert counts.shape == (400, 6) and is_hierarchical(config)
    for row in counts:
        # each drawn configuration brings as many draws as it has models, all among its own models
        per_config = {k: row[m].sum() for k, m in members.items()}
        assert all(per_config[k] % len(members[k]) == 0 for k in members)
        assert sum(per_config[k] / len(members[k]) for k in members) == 3  # 3 configurations drawn
    # every model is drawn sometimes, and a configuration can come back with one seed twice and another not at all
    assert (counts > 0).any(axis=0).all()
    zero_in_drawn = [(row[members[0]].sum() > 0) and (row[members[0]] == 0).any() for row in counts]
    assert any(zero_in_drawn)
    # mean multiplicity of every model is 1 (configurations uniform, seeds uniform within)
    assert np.allclose(counts.mean(axis=0), 1.0, atol=0.2)


def test_one_seed_per_configuration_is_plain_model_resampling():
    config = np.arange(5)
    assert not is_hierarchical(config)
    counts = draw_multiplicities(50, 7, config)
    rows = np.random.default_rng(7).integers(0, 5, size=(50, 5))
    expected = np.stack([np.bincount(r, minlength=5) for r in rows]).astype(float)
    np.testing.assert_array_equal(counts, expected)
    np.testing.assert_array_equal(draw_multiplicities(50, 7, n=5), expected)


def test_draws_are_deterministic_per_seed():
    config = np.array([0, 0, 1, 1, 2])
    np.testing.assert_array_equal(draw_multiplicities(20, 3, config), draw_multiplicities(20, 3, config))
    assert not np.array_equal(draw_multiplicities(20, 3, config), draw_multiplicities(20, 4, config))
    with pytest.raises(ValueError, match="n_boot"):
        draw_multiplicities(0, 3, config)


def test_percentile_interval_by_hand():
    # 0..100: the 2.5% and 97.5% quantiles (linear interpolation) are 2.5 and 97.5
    assert percentile_interval(np.arange(101.0)) == pytest.approx((2.5, 97.5))
    # half NaN is still enough; fewer is not
    assert percentile_interval(np.r_[np.arange(101.0), np.full(101, np.nan)]) == pytest.approx((2.5, 97.5))
    low, high = percentile_interval(np.r_[np.arange(3.0), np.full(10, np.nan)])
    assert math.isnan(low) and math.isnan(high)
    with pytest.raises(ValueError, match="level"):
        percentile_interval(np.arange(3.0), level=95)


def test_resample_replicates_repeat_rows_by_multiplicity():
    df = pd.DataFrame({"x": [1.0, 10.0, 100.0]})
    counts = np.array([[3, 0, 0], [1, 1, 1], [0, 2, 1]], dtype=float)
    np.testing.assert_array_equal(resample_replicates(df, lambda d: d["x"].sum(), counts), [3.0, 111.0, 120.0])


def test_tau_replicates_on_a_hand_counted_resample():
    # models x = y = (1, 2, 3); resample: model 0 twice, model 2 once -> rows (1, 1, 3): 2 concordant pairs and
    # 1 pair tied in both: τ-b = 2 / sqrt(2 · 2) = 1
    sx = pair_signs([1.0, 2.0, 3.0])
    sy = pair_signs([3.0, 2.0, 1.0])
    assert tau_replicates(np.array([[2.0, 0.0, 1.0]]), sx, sx)[0] == pytest.approx(1.0)
    assert tau_replicates(np.array([[2.0, 0.0, 1.0]]), sx, sy)[0] == pytest.approx(-1.0)
    assert tau_replicates(np.array([[1.0, 1.0, 1.0]]), sx, sy)[0] == pytest.approx(kendall_tau([1, 2, 3], [3, 2, 1]))


def test_bootstrap_ci_contains_estimate_and_is_deterministic():
    rng = np.random.default_rng(4)
    df = pd.DataFrame({"mu": rng.normal(size=60)})
    df["gap"] = df["mu"] + 0.3 * rng.normal(size=60)

    def tau(table):
        return kendall_tau(table["mu"], table["gap"])

    low, high = bootstrap_ci(df, tau, n_boot=100, seed=11)
    assert low <= tau(df) <= high and 0.5 < low < high <= 1.0
    assert bootstrap_ci(df, tau, n_boot=100, seed=11) == (low, high)
    # with configurations of 2 seeds the interval comes from other (hierarchical) resamples
    assert bootstrap_ci(df, tau, n_boot=100, seed=11, config=np.arange(60) // 2) != (low, high)
