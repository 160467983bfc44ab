"""The paper's experiments at quick size: their files, their plots, and one fact each could be checked by hand."""
import inspect
import math

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.selection import select_models
from analysis.stats import kendall_tau
from benchmark.experiments import EXPERIMENTS, ascent, layerwise, regularize, sensitivity, variants
from benchmark.experiments.artifacts import torch_threads
from benchmark.profiles import resolve_profile
from measures import compute_zoo
from tests.tiny_profile import runs_of
from zoo import build_zoo, load_dataset


def quiet(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def smoke_zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke-zoo")
    with torch_threads(1):
        build_zoo(runs_of(resolve_profile("smoke")), root, workers=1, progress=False, log=quiet)
        compute_zoo(root, list(sensitivity.MEASURES), options={"n_samples": 64}, progress=False, log=quiet)
    return root


def assert_plots(out, stem):
    for suffix in ("png", "pdf"):
        path = out / f"{stem}.{suffix}"
        assert path.exists() and path.stat().st_size > 1000, path


def test_registry_has_every_experiment_with_the_common_signature():
    assert set(EXPERIMENTS) == {"ascent", "layerwise", "regularize", "variants", "sensitivity"}
    for fn in EXPERIMENTS.values():
        params = inspect.signature(fn).parameters
        assert list(params)[0] == "out"
        for name in ("zoo", "quick", "workers", "data_dir", "log"):
            assert params[name].kind is inspect.Parameter.KEYWORD_ONLY


# --- ascent -------------------------------------------------------------------------------------------------

def test_ascent_rc_rises_for_crate_c_and_falls_for_crate_n(tmp_path):
    result = ascent.run(tmp_path, quick=True, log=quiet)
    table = pd.read_csv(tmp_path / "ascent.csv")
    assert {"variant", "seed", "layer", "rc"} <= set(table.columns)
    assert set(table["variant"]) == {"crate-c", "crate-n", "crate-t", "crate"}
    assert_plots(tmp_path, "ascent")
    assert_plots(tmp_path, "taylor")
    # the theory's update Z + MSSA(Z) at token scale 1: every seed, not just the mean
    primary = table[table["setting"] == ascent.SETTINGS[0].name]
    last = primary["layer"].max()
    for variant, rises in (("crate-c", True), ("crate-n", False)):
        curve = primary[primary["variant"] == variant].pivot(index="seed", columns="layer", values="rc")
        assert ((curve[last] > curve[0]) == rises).all(), variant
    assert result["expectation_holds"][ascent.SETTINGS[0].name]


def test_second_order_objective_on_a_hand_example():
    # Z = I_2 as two tokens, one head spanning R^2: A = I_2, ||A||_F^2 = 2; doubling Z multiplies it by 16
    z = torch.eye(2).unsqueeze(0)
    u = torch.eye(2).unsqueeze(0)                     # (K=1, d=2, p=2)
    assert ascent.second_order_objective(z, u).item() == pytest.approx(2.0)
    assert ascent.second_order_objective(2 * z, u).item() == pytest.approx(32.0)


def test_small_mssa_step_grows_taylor_energy_for_crate_c_and_shrinks_it_for_crate_n():
    # paper-notes §1: Z + U·SSA descends T2 = -(gamma^2/4) sum_k ||A_k||^2, i.e. grows sum_k ||A_k||^2
    for seed in range(3):
        assert ascent.taylor_step_change("crate-c", ascent.QUICK, seed) > 0
        assert ascent.taylor_step_change("crate-n", ascent.QUICK, seed) < 0


# --- layerwise ----------------------------------------------------------------------------------------------

def test_layerwise_curves_per_variant_and_checkpoint(smoke_zoo, tmp_path):
    result = layerwise.run(tmp_path, zoo=smoke_zoo, quick=True, log=quiet)
    table = pd.read_csv(tmp_path / "layerwise.csv")
    assert {"variant", "epoch", "layer", "srr", "sparsity", "rc", "r"} <= set(table.columns)
    assert_plots(tmp_path, "layerwise")
    assert set(table["checkpoint"]) == {"init", "epoch 2", "final"}   # smoke: checkpoint epoch 2, 4 epochs
    assert set(result["variants"]) == {"crate", "crate-c"}
    # the mean over runs is what the zoo's own layerwise.csv gives
    raw = pd.read_csv(smoke_zoo / "layerwise.csv")
    expect = raw[(raw["variant"] == "crate") & (raw["epoch"] == 0) & (raw["layer"] == 1)]["srr"].mean()
    got = table[(table["variant"] == "crate") & (table["checkpoint"] == "init") & (table["layer"] == 1)]["srr"]
    assert got.item() == pytest.approx(expect)
    # SRR = sparsity + R^c - R per row
    assert np.allclose(table["srr"], table["sparsity"] + table["rc"] - table["r"])


def test_curve_shape():
    assert layerwise.curve_shape(np.array([3.0, 1.0, 2.0])) == "valley"
    assert layerwise.curve_shape(np.array([3.0, 2.0, 1.0])) == "decreasing"
    assert layerwise.curve_shape(np.array([1.0, 2.0, 3.0])) == "increasing"


def test_zoo_experiments_without_a_zoo_say_how_to_get_one(tmp_path):
    for fn in (layerwise.run, sensitivity.run):
        with pytest.raises(ValueError, match="--zoo"):
            fn(tmp_path, quick=False, log=quiet)


# --- regularize ---------------------------------------------------------------------------------------------

def test_regularize_chooses_beta_on_validation_only(tmp_path, monkeypatch):
    cfg = regularize.QUICK
    train = load_dataset("digits", n_train=cfg.n_train, seed=cfg.split_seed).x_train
    seen = {"choose_beta": [], "train_in_choice": []}
    original_choose, original_train = regularize.choose_beta, regularize.train_regularized
    inside = []

    def spy_choose(variants_, cfg_, fit, val, workers=1):
        seen["choose_beta"].append((fit, val))
        inside.append(True)
        try:
            return original_choose(variants_, cfg_, fit, val, workers)
        finally:
            inside.pop()

    def spy_train(variant, cfg_, mode, beta, seed, fit, evals):
        if inside:
            seen["train_in_choice"].append((mode.name, seed, sorted(evals), fit))
        return original_train(variant, cfg_, mode, beta, seed, fit, evals)

    monkeypatch.setattr(regularize, "choose_beta", spy_choose)
    monkeypatch.setattr(regularize, "train_regularized", spy_train)
    result = regularize.run(tmp_path, quick=True, log=quiet)

    (fit, val), = seen["choose_beta"]
    # fit and validation are exactly the training subset's images, split in two: no test image reaches the choice
    rows = sorted(map(tuple, torch.cat([fit[0], val[0]]).flatten(1).tolist()))
    assert rows == sorted(map(tuple, train.flatten(1).tolist()))
    assert len(val[0]) == round(cfg.val_fraction * cfg.n_train)
    assert [(m, s, e) for m, s, e, _ in seen["train_in_choice"]] == [("all", 0, ["val"])] * len(cfg.betas)

    betas = pd.read_csv(tmp_path / "regularize_beta.csv")
    assert list(betas.columns) == ["variant", "beta", "val_acc", "chosen"]
    chosen = betas.loc[betas["chosen"], "beta"].item()
    assert chosen in cfg.betas and chosen == result["chosen_beta"]["crate-c"]
    assert chosen == betas.loc[betas["val_acc"].idxmax(), "beta"]   # ties -> first, the smaller beta

    table = pd.read_csv(tmp_path / "regularize.csv")
    assert list(table.columns) == regularize.COLUMNS
    assert set(table["mode"]) == {"ce", "all", "fixed", "random"}
    assert sorted(table.loc[table["mode"] == "fixed", "layer"]) == list(range(1, cfg.depth + 1))
    assert (table.loc[table["mode"] != "ce", "beta"] == chosen).all()
    assert table["test_acc"].between(0, 1).all() and table["val_acc"].between(0, 1).all()
    summary = pd.read_csv(tmp_path / "regularize_summary.csv")
    assert {"test_acc_mean", "test_acc_std", "overhead_seconds", "overhead_ratio"} <= set(summary.columns)
    assert_plots(tmp_path, "regularize")


# --- variants -----------------------------------------------------------------------------------------------

def test_variants_table_and_paper_scale_counts(tmp_path):
    result = variants.run(tmp_path, quick=True, log=quiet)
    table = pd.read_csv(tmp_path / "variants.csv")
    assert {"variant", "test_acc", "train_acc", "epochs", "seconds", "params_total",
            "params_trainable"} <= set(table.columns)
    assert len(table) == 6
    assert_plots(tmp_path, "variants")
    paper = pd.read_csv(tmp_path / "variants_paper_scale.csv").set_index("variant")
    # paper-notes §4.2 at d = 384: crate 5.381M, tied 3.607M; crate-fix has crate's total, the tied trainable
    assert paper.loc["crate", "params_total"] == 5_381_098
    assert paper.loc["crate-c", "params_total"] == 3_607_018
    assert paper.loc["crate-fix", "params_total"] == 5_381_098
    assert paper.loc["crate-fix", "params_trainable"] == 3_607_018
    assert result["paper_notes_match"]


# --- sensitivity --------------------------------------------------------------------------------------------

def test_sensitivity_default_row_equals_the_regular_measures(smoke_zoo, tmp_path):
    result = sensitivity.run(tmp_path, zoo=smoke_zoo, quick=True, n_boot=5, log=quiet)
    table = pd.read_csv(tmp_path / "sensitivity.csv")
    assert list(table.columns)[:2] == ["width", "option"]
    assert {"width", "option", "value", "measure", "statistic", "estimate", "ci_low", "ci_high",
            "n_models"} <= set(table.columns)
    assert_plots(tmp_path, "sensitivity")
    assert set(table["option"]) == set(sensitivity.GRID)

    models, counts = select_models(pd.read_csv(smoke_zoo / "models.csv"), include_unreached=True)
    regular = pd.read_csv(smoke_zoo / "measures.csv").merge(models, on="run_id")
    assert result["models"]["used"] == counts["used"] == len(regular) == 8

    # per model: the default setting reproduces measures.csv
    values = pd.read_csv(tmp_path / "sensitivity_values.csv")
    default = values[(values["option"] == "eps_sq") & (values["value"] == "0.5")]
    for measure in sensitivity.MEASURES:
        mine = default[default["measure"] == measure].set_index("run_id")["measure_value"]
        theirs = regular.set_index("run_id")[measure]
        assert np.allclose(mine.loc[theirs.index], theirs, rtol=1e-9, atol=1e-9), measure
    # and so does the correlation: every option's default row gives the same tau
    expect = kendall_tau(regular["srr"], regular["gap_loss"])
    rows = table[(table["measure"] == "srr") & (table["statistic"] == "tau") & table["is_default"]]
    assert len(rows) == len(sensitivity.GRID)
    assert np.allclose(rows["estimate"], expect) and not math.isnan(expect)
