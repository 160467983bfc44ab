"""Facts about analysis.stats that can be checked by hand (pair counts written beside each case)."""
import doctest
import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from analysis import stats
from analysis.stats import conditional_mi, conditional_mi_detail, granulated_kendall, kendall_tau


def test_docstring_examples_run():
    failures, tried = doctest.testmod(stats, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert tried >= 5 and failures == 0


# --- Kendall τ-b ---------------------------------------------------------------------------------------------------

def test_tau_perfect_agreement_and_reversal():
    # 4 points, 6 pairs: all concordant -> 6/6; all discordant -> -6/6
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [40, 30, 20, 10]) == -1.0


def test_tau_b_with_ties_in_x_and_y():
    # x = [1, 1, 2, 3], y = [2, 1, 2, 0]; the 6 pairs:
    #   (0,1) tied in x   (0,2) tied in y   (0,3) D   (1,2) C   (1,3) D   (2,3) D
    # n_c = 1, n_d = 3, n0 = 6, n1 = 1, n2 = 1 -> (1 - 3) / sqrt(5 * 5) = -0.4
    assert kendall_tau([1, 1, 2, 3], [2, 1, 2, 0]) == pytest.approx(-0.4, abs=1e-15)


def test_tau_b_pair_tied_in_both():
    # x = [1, 1, 2], y = [5, 5, 6]: (0,1) tied in both, (0,2) C, (1,2) C
    # n0 = 3, n1 = n2 = 1 -> 2 / sqrt(2 * 2) = 1
    assert kendall_tau([1, 1, 2], [5, 5, 6]) == 1.0


def test_tau_drops_nan_pairs_and_degenerate_cases():
    # the NaN pair goes; the rest is the perfect-agreement case
    assert kendall_tau([1, 2, np.nan, 4], [1, 2, 3, 4]) == 1.0
    assert kendall_tau(pd.Series([1, 2, None, 4], dtype="Float64"), [1, 2, 3, 4]) == 1.0
    assert math.isnan(kendall_tau([1.0], [2.0]))
    assert math.isnan(kendall_tau([1, np.nan, 3], [np.nan, 2, 5]))  # one pair left
    assert math.isnan(kendall_tau([3, 3, 3], [1, 2, 3]))            # constant x
    assert math.isnan(kendall_tau([1, 2, 3], [7, 7, 7]))            # constant y


def test_tau_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="same length"):
        kendall_tau([1, 2, 3], [1, 2])


@pytest.mark.parametrize("seed", range(5))
def test_tau_matches_scipy_on_random_data(seed):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=80), rng.normal(size=80)
    assert kendall_tau(x, y) == pytest.approx(scipy_stats.kendalltau(x, y).statistic, abs=1e-12)
    x_tied, y_tied = rng.integers(0, 4, size=80), rng.integers(0, 6, size=80)  # heavy ties on both sides
    assert kendall_tau(x_tied, y_tied) == pytest.approx(scipy_stats.kendalltau(x_tied, y_tied).statistic, abs=1e-12)
    x_nan = np.where(rng.random(80) < 0.1, np.nan, x)
    expected = scipy_stats.kendalltau(x_nan, y_tied, nan_policy="omit").statistic
    assert kendall_tau(x_nan, y_tied) == pytest.approx(expected, abs=1e-12)


def test_tau_ranks_infinite_values():
    # inf is the largest value, -inf the smallest: x = [-inf, 1, inf] follows y = [1, 2, 3] exactly
    assert kendall_tau([-np.inf, 1, np.inf], [1, 2, 3]) == 1.0
    assert kendall_tau([np.inf, np.inf, 1], [3, 2, 1]) == pytest.approx(scipy_stats.kendalltau([9, 9, 1], [3, 2, 1])[0])


# --- granulated ψ_i and Ψ ------------------------------------------------------------------------------------------

def _grid():
    """lr ∈ {1, 2} × bs ∈ {a, b} × seed ∈ {0, 1}, plus one lone model (lr 3, bs c) and a constant dropout column.

    gap = lr + 10·[bs = b] + 100·seed and mu = lr − 10·[bs = b] − 100·seed: along lr the measure follows the gap
    (τ = 1), along bs it runs against it (τ = −1), and across seeds it runs against it too.
    """
    rows = []
    for lr, bs, seed in itertools.product([1, 2], ["a", "b"], [0, 1]):
        b = 10 * (bs == "b")
        rows.append(dict(lr=lr, bs=bs, seed=seed, dropout=0.1, gap=lr + b + 100 * seed, mu=lr - b - 100 * seed))
    rows.append(dict(lr=3, bs="c", seed=0, dropout=0.1, gap=5.0, mu=5.0))
    return pd.DataFrame(rows)


def test_psi_on_hand_made_grid():
    result = granulated_kendall(_grid(), "mu", "gap", axes=["lr", "bs"])
    # 4 groups per axis: (other axis value, seed); the lone model is a group of 1 on both axes
    assert result.psi == {"lr": 1.0, "bs": -1.0}
    assert result.Psi == 0.0 and result.n_axes == 2
    assert (result.per_axis["lr"].n_groups, result.per_axis["lr"].n_skipped) == (4, 1)
    assert (result.per_axis["bs"].n_groups, result.per_axis["bs"].n_skipped) == (4, 1)
    assert result.fixed == ("seed",)


def test_psi_keeps_seed_fixed_inside_groups():
    # Without the seed fixed, the lr group at bs = a holds (lr, seed) = (1,0) (2,0) (1,1) (2,1) with
    # gap 1, 2, 101, 102 and mu 1, 2, -99, -98: 2 concordant pairs (within a seed), 4 discordant -> -2/6.
    result = granulated_kendall(_grid(), "mu", "gap", axes=["lr", "bs"], fixed=())
    assert result.psi["lr"] == pytest.approx(-1 / 3)
    assert result.fixed == ()


def test_psi_axis_without_usable_group_is_nan_and_left_out_of_Psi():
    result = granulated_kendall(_grid(), "mu", "gap", axes=["lr", "bs", "dropout"])
    # dropout never varies: each of its 9 (lr, bs, seed) groups has one dropout value
    assert math.isnan(result.psi["dropout"])
    assert (result.per_axis["dropout"].n_groups, result.per_axis["dropout"].n_skipped) == (0, 9)
    assert result.Psi == 0.0 and result.n_axes == 2


def test_psi_skips_constant_gap_and_scores_constant_measure_zero():
    df = pd.DataFrame({"lr": [1, 2, 1, 2, 1, 2], "bs": [32, 32, 64, 64, 128, 128],
                       "gap": [1.0, 2.0, 3.0, 3.0, 5.0, 6.0],   # constant at bs = 64 -> skipped
                       "mu": [7.0, 7.0, 1.0, 2.0, 1.0, 2.0]})  # constant at bs = 32 -> τ counted as 0
    lr = granulated_kendall(df, "mu", "gap", axes=["lr", "bs"]).per_axis["lr"]
    # groups by bs: 32 -> 0 (constant measure), 64 -> skipped, 128 -> 1
    assert (lr.psi, lr.n_groups, lr.n_skipped, lr.n_constant_measure) == (0.5, 2, 1, 1)


@pytest.mark.parametrize("seed", range(3))
def test_psi_equals_mean_tau_over_groups_computed_one_by_one(seed):
    # an incomplete random grid with ties and repeated configurations, checked against the definition group by group
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"lr": rng.integers(0, 3, 90), "bs": rng.integers(0, 3, 90), "seed": rng.integers(0, 2, 90),
                       "mu": rng.integers(0, 4, 90).astype(float), "gap": rng.integers(0, 5, 90).astype(float)})
    result = granulated_kendall(df, "mu", "gap", axes=["lr", "bs"])
    for axis, other in [("lr", "bs"), ("bs", "lr")]:
        taus = []
        for _, group in df.groupby([other, "seed"]):
            if group[axis].nunique() >= 2 and group["gap"].nunique() >= 2:
                taus.append(0.0 if group["mu"].nunique() < 2 else scipy_stats.kendalltau(group["mu"], group["gap"])[0])
        assert result.psi[axis] == pytest.approx(np.mean(taus), abs=1e-12)
        assert result.per_axis[axis].n_groups == len(taus)


def test_psi_drops_nan_rows_and_names_missing_columns():
    df = _grid()
    df.loc[0, "mu"] = np.nan  # (lr 1, bs a, seed 0): its lr group and its bs group shrink to 1 model
    result = granulated_kendall(df, "mu", "gap", axes=["lr", "bs"])
    assert result.per_axis["lr"].n_skipped == 2 and result.per_axis["bs"].n_skipped == 2
    with pytest.raises(KeyError, match="width"):
        granulated_kendall(df, "mu", "gap", axes=["lr", "width"])


# --- conditional mutual information ---------------------------------------------------------------------------------

def _random_models(n, seed):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"h": rng.integers(0, 4, size=n), "z": rng.integers(0, 3, size=n),
                         "w": rng.integers(0, 2, size=n), "gap": rng.normal(size=n)}), rng


def test_cmi_hand_computed_unconditional_value():
    # mu = [1, 2, 3], gap = [1, 3, 2]: unordered pairs (1,2) C, (1,3) C, (2,3) D; 6 ordered pairs give
    # n(+,+) = n(-,-) = 2 and n(+,-) = n(-,+) = 1; p(a) = p(b) = 1/2.
    # I = 2·(2/6)·log((2/6)/(1/4)) + 2·(1/6)·log((1/6)/(1/4)),  H = log 2
    df = pd.DataFrame({"h": [0, 0, 0], "mu": [1.0, 2.0, 3.0], "gap": [1.0, 3.0, 2.0]})
    expected = ((2 / 3) * math.log(4 / 3) + (1 / 3) * math.log(2 / 3)) / math.log(2)
    assert conditional_mi(df, "mu", "gap", axes=["h"], max_conditioning=0) == pytest.approx(expected)


def test_cmi_measure_equal_to_gap_scores_one():
    df, _ = _random_models(60, seed=0)
    df["mu"] = df["gap"]
    assert conditional_mi(df, "mu", "gap", axes=["h", "z", "w"]) == pytest.approx(1.0, abs=1e-12)


def test_cmi_monotone_transform_of_gap_scores_one():
    df, _ = _random_models(60, seed=1)
    df["mu"] = np.exp(3 * df["gap"]) - 5
    assert conditional_mi(df, "mu", "gap", axes=["h", "z", "w"]) == pytest.approx(1.0, abs=1e-12)


def test_cmi_independent_measure_scores_near_zero():
    df, rng = _random_models(200, seed=2)
    df["mu"] = rng.normal(size=len(df))
    assert conditional_mi(df, "mu", "gap", axes=["h", "z", "w"]) < 0.05


def test_cmi_conditioning_removes_a_measure_that_only_tracks_a_hyperparameter():
    df, rng = _random_models(120, seed=3)
    df["gap"] = df["h"] + rng.normal(size=len(df))
    df["mu"] = df["h"] ** 2  # knows h and nothing else
    detail = conditional_mi_detail(df, "mu", "gap", axes=["h", "z", "w"])
    ratio = dict(zip(detail["conditioning"], detail["ratio"]))
    # unconditionally the measure looks informative; given h (both models' values) V_mu is fixed in every cell
    assert ratio[()] > 0.1
    assert ratio[("h",)] == 0.0
    assert conditional_mi(df, "mu", "gap", axes=["h", "z", "w"]) == 0.0


def test_cmi_detail_lists_every_set_and_drops_self_pairs_and_ties():
    df = pd.DataFrame({"h": [0, 1, 0, 1], "z": [0, 0, 1, 1], "w": [0, 1, 1, 0],
                       "mu": [1.0, 1.0, 2.0, 3.0], "gap": [0.1, 0.2, 0.3, 0.4]})
    detail = conditional_mi_detail(df, "mu", "gap", axes=["h", "z", "w"])
    # 1 empty set + 3 singletons + 3 pairs
    assert list(detail["conditioning"]) == [(), ("h",), ("z",), ("w",), ("h", "z"), ("h", "w"), ("z", "w")]
    # 4·3 = 12 ordered pairs without self-pairs, minus the 2 orders of the pair tied in mu
    assert (detail["n_pairs"] == 10).all()
    assert len(conditional_mi_detail(df, "mu", "gap", axes=["h", "z", "w"], max_conditioning=1)) == 4


def test_cmi_nan_when_nothing_to_score():
    df = pd.DataFrame({"h": [0, 1, 2], "mu": [1.0, 1.0, 1.0], "gap": [0.1, 0.2, 0.3]})
    assert math.isnan(conditional_mi(df, "mu", "gap", axes=["h"]))  # every pair tied in mu
    with pytest.raises(ValueError, match="max_conditioning"):
        conditional_mi(df, "mu", "gap", axes=["h"], max_conditioning=-1)


def test_psi_is_averaged_within_each_seed_then_over_seeds():
    # seed 0: lr groups at bs a and b both agree (τ = 1, 1); seed 1: only bs a is a usable group and disagrees
    # (τ = −1). ψ_lr = mean(mean(1, 1), −1) = 0, not the mean over the three groups, 1/3.
    df = pd.DataFrame({"lr": [1, 2, 1, 2, 1, 2, 1], "bs": ["a", "a", "b", "b", "a", "a", "b"],
                       "seed": [0, 0, 0, 0, 1, 1, 1], "gap": [1.0, 2, 3, 4, 1, 2, 3], "mu": [1.0, 2, 3, 4, 2, 1, 3]})
    result = granulated_kendall(df, "mu", "gap", axes=["lr", "bs"])
    assert result.psi["lr"] == pytest.approx(0.0)
    assert result.per_axis["lr"].n_groups == 3
    # without the seed held fixed it is one group per bs over both seeds
    assert granulated_kendall(df, "mu", "gap", axes=["lr", "bs"], fixed=()).per_axis["lr"].n_groups == 2
