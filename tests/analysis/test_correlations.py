"""Facts about analysis.correlations on a synthetic zoo table (no training): 2 widths x 4 variants x 3 lr x
2 batch sizes, one seed, dropout held at 0 (so it is not a granulated axis)."""
import doctest
import itertools

import numpy as np
import pandas as pd
import pytest

from analysis import correlations as correlations_module
from analysis.bootstrap import draw_multiplicities, percentile_interval, resample_replicates
from analysis.correlations import CORRELATION_COLUMNS, GAP, MU, correlation_table, measure_correlations
from analysis.selection import configuration_codes, select_models
from analysis.sign_error import SIGN_ERROR_STATISTICS
from analysis.stats import conditional_mi, granulated_kendall, kendall_tau

WIDTHS = (16, 32)
VARIANTS = ("crate", "crate-c", "crate-n", "crate-t")
LRS = (1e-3, 3e-3, 1e-2)
BATCH_SIZES = (32, 64)


def synthetic_zoo(seed=0):
    """48 models, every one done and at the target; distinct gaps; measures: gap, −gap, noise, gap + noise, and one
    that follows the gap at width 16 and runs against it at width 32."""
    rng = np.random.default_rng(seed)
    rows = [{"run_id": f"r{i:02d}", "variant": v, "lr": lr, "batch_size": bs, "dropout": 0.0, "width": w,
             "seed": 0, "status": "done", "reached_target": True}
            for i, (w, v, lr, bs) in enumerate(itertools.product(WIDTHS, VARIANTS, LRS, BATCH_SIZES))]
    models = pd.DataFrame(rows)
    models["gap_loss"] = rng.permutation(len(models)) / 10 + 0.1  # distinct, so τ = ±1 is reachable
    gap = models["gap_loss"]
    measures = pd.DataFrame({
        "run_id": models["run_id"],
        "same": gap,
        "reversed": -gap,
        "noise": rng.normal(size=len(models)),
        "noisy": gap + rng.normal(scale=1.0, size=len(models)),
        "flip": np.where(models["width"] == 16, gap, -gap),
    })
    return models, measures


def value(table, measure, statistic, width=16, axis="all"):
    row = table.loc[(table["measure"] == measure) & (table["statistic"] == statistic) & (table["width"] == width)
                    & (table["axis"] == axis)]
    assert len(row) == 1, (measure, statistic, width, axis)
    return row.iloc[0]


@pytest.fixture(scope="module")
def zoo():
    return synthetic_zoo()


@pytest.fixture(scope="module")
def table(zoo):
    return correlation_table(*zoo, n_boot=50)


def test_docstring_examples_run():
    failures, tried = doctest.testmod(correlations_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert tried >= 3 and failures == 0


def test_long_form_columns_and_rows(table):
    assert list(table.columns) == CORRELATION_COLUMNS
    # per width and measure: tau, psi x 3 varied axes, Psi, cmi, then 3 sign-error statistics x (3 axes + all)
    assert len(table) == 2 * 5 * (6 + 3 * 4)
    rows = table.loc[(table["width"] == 16) & (table["measure"] == "same")]
    assert list(rows["statistic"])[:6] == ["tau", "psi", "psi", "psi", "Psi", "cmi"]
    assert list(rows["axis"])[:6] == ["all", "variant", "lr", "batch_size", "all", "all"]
    assert list(rows["statistic"])[6:] == list(SIGN_ERROR_STATISTICS) * 4
    assert list(rows["axis"])[6::3] == ["variant", "lr", "batch_size", "all"]
    assert set(table["n_models"]) == {24}


def test_measure_equal_to_gap_scores_one_everywhere(table):
    for width in WIDTHS:
        for statistic, axis in [("tau", "all"), ("psi", "variant"), ("psi", "lr"), ("psi", "batch_size"),
                                ("Psi", "all"), ("cmi", "all")]:
            row = value(table, "same", statistic, width, axis)
            assert row["value"] == pytest.approx(1.0)
            # every resample keeps the perfect order, so the interval is the point
            assert (row["ci_low"], row["ci_high"]) == pytest.approx((1.0, 1.0))


def test_reversed_measure_scores_minus_one_but_full_cmi(table):
    for statistic, axis in [("tau", "all"), ("psi", "variant"), ("psi", "lr"), ("psi", "batch_size"),
                            ("Psi", "all")]:
        assert value(table, "reversed", statistic, 16, axis)["value"] == pytest.approx(-1.0)
    # CMI has no sign: −gap orders every pair exactly (reversed), so it carries all of the gap's information
    assert value(table, "reversed", "cmi")["value"] == pytest.approx(1.0)


def test_random_measure_is_far_from_perfect(table):
    for width in WIDTHS:
        assert abs(value(table, "noise", "tau", width)["value"]) < 0.5
        assert abs(value(table, "noise", "Psi", width)["value"]) < 0.6
        assert value(table, "noise", "cmi", width)["value"] < 0.2


def test_widths_are_analysed_separately(table):
    # follows the gap at width 16 and runs against it at width 32: pooled it would be near 0
    assert value(table, "flip", "tau", 16)["value"] == pytest.approx(1.0)
    assert value(table, "flip", "tau", 32)["value"] == pytest.approx(-1.0)
    assert value(table, "flip", "Psi", 16)["value"] == pytest.approx(1.0)
    assert value(table, "flip", "Psi", 32)["value"] == pytest.approx(-1.0)


def test_axis_that_does_not_vary_is_not_granulated(table):
    assert "dropout" not in set(table["axis"])
    assert table.attrs["settings"]["varied_axes"] == {16: ["variant", "lr", "batch_size"],
                                                      32: ["variant", "lr", "batch_size"]}


def test_axis_varying_in_one_width_only_is_granulated_there_only(zoo):
    models, measures = zoo
    models = models.copy()
    # at width 32 only lr = 1e-3 is kept: lr does not vary there
    models.loc[(models["width"] == 32) & (models["lr"] != 1e-3), "status"] = "failed"
    out = correlation_table(models, measures, n_boot=10)
    psi_axes = out.loc[out["statistic"] == "psi"].groupby("width")["axis"].unique()
    assert list(psi_axes[16]) == ["variant", "lr", "batch_size"]
    assert list(psi_axes[32]) == ["variant", "batch_size"]


def test_group_counts(table):
    # along variant, a group is one (lr, batch size) cell: 3 x 2 = 6; along lr 4 x 2 = 8; along batch size 4 x 3 = 12
    assert value(table, "same", "psi", 16, "variant")["n_groups"] == 6
    assert value(table, "same", "psi", 16, "lr")["n_groups"] == 8
    assert value(table, "same", "psi", 16, "batch_size")["n_groups"] == 12
    assert value(table, "same", "Psi")["n_groups"] == 26
    assert value(table, "same", "tau")["n_groups"] == 1
    assert value(table, "same", "cmi")["n_groups"] == 1 + 3 + 3  # S = {}, 3 singletons, 3 pairs


def test_excluded_models_are_counted_and_left_out(zoo):
    models, measures = zoo
    models = models.copy()
    models.loc[0, "status"] = "diverged"
    models.loc[1, "status"] = "failed"
    models.loc[2, "status"] = "pending"
    models.loc[[3, 4], "reached_target"] = False
    models.loc[30, "reached_target"] = False        # width 32
    out = correlation_table(models, measures, n_boot=10)
    counts = out.attrs["counts"]
    assert counts["total"] == 48
    assert counts["excluded"] == {"not_reached": 3, "diverged": 1, "failed": 1, "pending": 1}
    assert counts["by_status"] == {"diverged": 1, "done": 45, "failed": 1, "pending": 1}
    assert counts["reached_target"] == counts["used"] == 42
    assert counts["used_by_width"] == {16: 19, 32: 23}
    assert value(out, "same", "tau", 16)["n_models"] == 19

    with_unreached = correlation_table(models, measures, include_unreached=True, n_boot=10)
    assert with_unreached.attrs["counts"]["used_by_width"] == {16: 21, 32: 24}
    assert with_unreached.attrs["counts"]["excluded"]["not_reached"] == 0


def test_reached_target_read_from_csv_strings():
    models = pd.DataFrame({"status": ["done", "done", "done", None], "reached_target": ["True", "False", "1", ""]})
    kept, counts = select_models(models)
    assert list(kept.index) == [0, 2]
    assert counts["excluded"] == {"not_reached": 1, "pending": 1}


def test_nan_measure_values_leave_out_that_measure_only(zoo):
    models, measures = zoo
    measures = measures.copy()
    measures.loc[:4, "noise"] = np.nan                 # 5 models of width 16
    out = correlation_table(models, measures, n_boot=10)
    assert value(out, "noise", "tau", 16)["n_models"] == 19
    assert value(out, "same", "tau", 16)["n_models"] == 24


def test_interval_contains_the_value(table):
    for width in WIDTHS:
        for statistic in ("tau", "Psi"):
            row = value(table, "noisy", statistic, width)
            assert row["ci_low"] <= row["value"] <= row["ci_high"]
            assert row["ci_low"] < row["ci_high"]


def _replicated_zoo(zoo):
    """Width 16 of the synthetic zoo with 2 seeds per configuration, 3 models dropped (uneven seeds), ties, an
    infinite value and a NaN in play."""
    models, measures = zoo
    rng = np.random.default_rng(5)
    models = models.loc[models["width"] == 16]
    models = pd.concat([models.assign(seed=0), models.assign(seed=1, run_id=models["run_id"] + "s1")],
                       ignore_index=True).drop(index=[1, 7, 30]).reset_index(drop=True)
    models["gap_loss"] = rng.permutation(len(models)) / 10.0
    measures = pd.DataFrame({"run_id": models["run_id"], "noisy": models["gap_loss"] + rng.normal(size=len(models)),
                             "constant": 1.0})
    measures["tied"] = np.round(measures["noisy"])
    measures.loc[3, "tied"] = np.inf
    measures.loc[5, "noisy"] = np.nan
    return models, measures


def test_fast_replicates_equal_the_statistics_on_explicit_resamples(zoo):
    """The quadratic forms give, resample by resample, what analysis.stats computes on the explicit resampled
    table (hierarchical resamples: configurations, then seeds)."""
    models, measures = _replicated_zoo(zoo)
    axes = ("variant", "lr", "batch_size")
    frame = models[[*axes, "seed"]].assign(**{GAP: models["gap_loss"], MU: measures["tied"]})
    counts = draw_multiplicities(25, 3, configuration_codes(models, axes))
    assert len(set(counts.sum(axis=1))) > 1  # configurations of 1 and 2 seeds: resample sizes vary
    fast = correlations_module._replicates(frame, counts, counts, axes, ("seed",))

    def check(key, fn):
        reference = resample_replicates(frame, fn, counts)
        assert np.isfinite(reference).sum() >= 20, key  # not vacuous
        np.testing.assert_allclose(fast[key], reference, atol=1e-12, rtol=0, err_msg=key)

    check("tau", lambda d: kendall_tau(d[MU], d[GAP]))
    for axis in axes:
        check(f"psi:{axis}", lambda d, axis=axis: granulated_kendall(d, MU, GAP, axes).psi[axis])
    check("Psi", lambda d: granulated_kendall(d, MU, GAP, axes).Psi)
    check("cmi", lambda d: conditional_mi(d, MU, GAP, axes))


def test_table_intervals_come_from_the_hierarchical_resamples(zoo):
    models, measures = _replicated_zoo(zoo)
    result = measure_correlations(models, measures, n_boot=30, seed=3)
    table = result.table
    assert table.attrs["settings"]["bootstrap"][16].startswith("hierarchical")
    axes = ("variant", "lr", "batch_size")
    counts = draw_multiplicities(30, 3, configuration_codes(models, axes))
    keep = measures["noisy"].notna().to_numpy()
    frame = models.loc[keep, [*axes, "seed"]].reset_index(drop=True).assign(
        **{GAP: models.loc[keep, "gap_loss"].to_numpy(), MU: measures.loc[keep, "noisy"].to_numpy()})
    # every measure sees the same resamples: the width's vectors restricted to its models
    reference = resample_replicates(frame, lambda d: kendall_tau(d[MU], d[GAP]), counts[:, keep])
    row = value(table, "noisy", "tau")
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(percentile_interval(reference))
    np.testing.assert_allclose(result.replicates[16]["noisy"]["tau"], reference, atol=1e-12)
    # the constant measure has no τ anywhere, so no interval
    assert np.isnan(value(table, "constant", "tau")["ci_low"])


def test_one_seed_per_configuration_resamples_models(table):
    assert table.attrs["settings"]["bootstrap"] == {16: correlations_module.PLAIN, 32: correlations_module.PLAIN}


def test_fewer_cmi_resamples_and_none(zoo):
    out = correlation_table(*zoo, n_boot=20, n_boot_cmi=0)
    cmi = out.loc[out["statistic"] == "cmi"]
    assert cmi["value"].notna().all() and cmi["ci_low"].isna().all()
    assert out.loc[out["statistic"] == "tau", "ci_low"].notna().all()


def test_bad_arguments_are_named(zoo):
    models, measures = zoo
    with pytest.raises(KeyError, match="dropout_rate"):
        correlation_table(models, measures, axes=["dropout_rate"])
    with pytest.raises(ValueError, match="n_boot"):
        correlation_table(models, measures, n_boot=0)
    with pytest.raises(ValueError, match="more than once"):
        correlation_table(models, pd.concat([measures, measures.iloc[:1]]))
