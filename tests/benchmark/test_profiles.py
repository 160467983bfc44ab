"""benchmark.profiles: the grid a profile defines, and a profile's validation (every key, every type)."""
import copy
import itertools
from pathlib import Path

import pytest

from benchmark.profiles import GRID_AXES, ProfileError, builtin_profiles, load_profile, parse_profile, resolve_profile
from benchmark.pipeline import zoo_stage
from zoo import UsageError
from zoo.models import VARIANTS


# --- profiles ---------------------------------------------------------------------------------------------------

BASE = {
    "description": "test",
    "data": {"dataset": "digits", "n_train": 100},
    "model": {"patch_size": 4, "depth": 1, "heads": 2},
    "train": {"max_epochs": 2, "warmup_epochs": 0},
    "grid": {"variant": ["crate", "crate-c"], "lr": [0.001, 0.002], "batch_size": [32], "dropout": [0.0],
             "width": [8], "seed": [0, 1]},
}


def with_(path: str, value):
    raw = copy.deepcopy(BASE)
    *parents, key = path.split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
    node[key] = value
    return raw


def test_base_profile_parses_to_its_grid():
    profile = parse_profile(copy.deepcopy(BASE), name="t")
    assert profile.n_runs == 2 * 2 * 1 * 1 * 1 * 2
    runs = profile.runs(image_size=8, channels=1, num_classes=10)
    assert len(runs) == 8 and len({r.run_id for r in runs}) == 8 and len({r.group_id for r in runs}) == 4
    # fixed order: variant, lr, batch size, dropout, width, seed (seed fastest)
    assert [(r.model.variant, r.train.lr, r.train.seed) for r in runs[:3]] == [
        ("crate", 0.001, 0), ("crate", 0.001, 1), ("crate", 0.002, 0)]
    assert all(r.model.patch_size == 4 and r.train.max_epochs == 2 and r.data.n_train == 100 for r in runs)


def test_missing_grid_axes_take_their_fixed_or_default_value():
    raw = copy.deepcopy(BASE)
    del raw["grid"]
    profile = parse_profile(raw)
    (run,) = profile.runs(image_size=8, channels=1, num_classes=10)
    assert profile.n_runs == 1 and profile.grid == {}
    assert (run.model.variant, run.train.lr, run.model.dim, run.data.n_train, run.model.depth) == (
        "crate", 0.001, 32, 100, 1)


def test_optional_axes_vary_their_config_field():
    raw = with_("grid.n_train", [50, 100])
    del raw["data"]["n_train"], raw["model"]["depth"]
    raw["grid"].update(weight_decay=[0.0, 0.1], depth=[1, 2])
    runs = parse_profile(raw).runs(image_size=8, channels=1, num_classes=10)
    assert len(runs) == 8 * 8 and len({r.run_id for r in runs}) == 64
    assert {(r.data.n_train, r.train.weight_decay, r.model.depth) for r in runs} == set(
        itertools.product([50, 100], [0.0, 0.1], [1, 2]))
    assert {r.axes["n_train"] for r in runs} == {50, 100}               # a column of models.csv


@pytest.mark.parametrize("path,value", [("data.n_train", 100), ("model.dim", 8), ("train.lr", 0.01)])
def test_a_field_both_fixed_and_varied_is_an_error(path, value):
    raw = with_(path, value)
    if path == "data.n_train":
        raw["grid"]["n_train"] = [50]
    with pytest.raises(ProfileError, match="fixed and also varied"):
        parse_profile(raw)


@pytest.mark.parametrize("path,section", [
    ("gird", "top level"), ("data.n_trian", "data"), ("model.dimm", "model"), ("model.image_size", "model"),
    ("train.epochs", "train"), ("grid.widht", "grid"), ("analysis.n_bot", "analysis"),
])
def test_unknown_key_is_named_with_the_allowed_ones(path, section):
    raw = with_(path, 1)
    with pytest.raises(ProfileError) as err:
        parse_profile(raw)
    message = str(err.value)
    assert path.split(".")[-1] in message and f"allowed in [{section}]" in message
    allowed = {"top level": ["data", "model", "train", "grid", "measures", "analysis"],
               "data": ["dataset", "n_train", "split_seed"], "model": ["patch_size", "depth", "heads"],
               "train": ["max_epochs", "target_ce", "warmup_epochs"], "grid": list(GRID_AXES),
               "analysis": ["gap", "n_boot", "seed", "include_unreached"]}[section]
    assert all(a in message for a in allowed), message


@pytest.mark.parametrize("path,value,key", [
    ("grid.lr", ["0.001"], "grid.lr"),                   # string lr
    ("grid.lr", [0.0], "grid.lr"),
    ("grid.lr", [-0.001], "grid.lr"),
    ("grid.batch_size", [32.0], "grid.batch_size"),      # float batch size
    ("grid.batch_size", [True], "grid.batch_size"),      # bool is not an int here
    ("grid.batch_size", [0], "grid.batch_size"),
    ("grid.width", [-8], "grid.width"),
    ("grid.seed", [0.5], "grid.seed"),
    ("grid.dropout", [1.0], "grid.dropout"),
    ("grid.dropout", [-0.1], "grid.dropout"),
    ("grid.dropout", ["0.1"], "grid.dropout"),
    ("grid.variant", ["crate", "crate-x"], "grid.variant"),
    ("grid.lr", [0.001, 0.001], "grid.lr"),              # repeated value
    ("grid.seed", [], "grid.seed"),
    ("data.n_train", 0, "data.n_train"),
    ("data.n_train", True, "data.n_train"),
    ("data.n_test", 1.5, "data.n_test"),
    ("data.dataset", 3, "data.dataset"),
    ("data", [1], "[data]"),
    ("train.max_epochs", 0, "max_epochs"),
    ("train.max_epochs", "4", "max_epochs"),
    ("train.target_ce", "0.01", "target_ce"),
    ("train.warmup_epochs", -1, "warmup_epochs"),
    ("train.label_smoothing", 1.0, "label_smoothing"),
    ("model.depth", 0, "depth"),
    ("model.heads", "2", "heads"),
    ("model.patch_size", 2.5, "patch_size"),
    ("model.heads", 3, "heads"),                         # does not divide the width 8
    ("train.checkpoint_epochs", 3, "checkpoint_epochs"),
    ("train.checkpoint_epochs", [0], "checkpoint_epochs"),
    ("grid.n_train", [0], "grid.n_train"),
    ("train.target_ce", float("nan"), "train.target_ce"),
    ("train.weight_decay", float("nan"), "train.weight_decay"),
    ("grid.lr", [float("inf")], "grid.lr"),
    ("model.ista_step", -0.1, "model.ista_step"),
    ("model.temperature", 0.0, "model.temperature"),
    ("grid.weight_decay", [-0.1], "grid.weight_decay"),
    ("grid.depth", [2.0], "grid.depth"),
    ("analysis.gap", "gap_x", "analysis.gap"),
    ("analysis.include_unreached", 1, "analysis.include_unreached"),
    ("measures.n_samples", "64", "n_samples"),
    ("measures.names", ["no-such-measure"], "no-such-measure"),
])
def test_bad_value_names_its_key(path, value, key):
    with pytest.raises(ProfileError) as err:
        parse_profile(with_(path, value))
    assert key in str(err.value)


@pytest.mark.parametrize("gap", ["gap_loss", "gap_acc", "gap_shift"])
def test_every_recorded_gap_is_a_valid_analysis_gap(gap):
    assert parse_profile(with_("analysis.gap", gap)).analysis.gap == gap


def test_unknown_variant_lists_the_allowed_ones():
    with pytest.raises(ProfileError) as err:
        parse_profile(with_("grid.variant", ["crate-x"]))
    assert "crate-x" in str(err.value) and all(v in str(err.value) for v in VARIANTS)


def test_grid_scalar_is_one_value():
    profile = parse_profile(with_("grid.lr", 0.01))
    assert profile.grid["lr"] == (0.01,)


def test_load_profile_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid]\nlr = [0.001,\n")
    with pytest.raises(ProfileError, match="bad.toml: invalid TOML"):
        load_profile(bad)
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile(tmp_path / "missing.toml")
    typo = tmp_path / "typo.toml"
    typo.write_text("[train]\nmax_epoch = 3\n")
    with pytest.raises(ProfileError, match="train.max_epoch"):
        load_profile(typo)


def test_load_profile_keeps_source_and_name(tmp_path):
    path = tmp_path / "mine.toml"
    text = 'description = "d"\nestimate = "1 s"\n[grid]\nwidth = [8]\nlr = [0.01]\n'
    path.write_text(text)
    profile = load_profile(path)
    assert (profile.name, profile.source, profile.estimate, profile.grid["lr"]) == ("mine", text, "1 s", (0.01,))
    assert resolve_profile(path).grid == profile.grid                 # a path works where a name does


def test_a_run_that_does_not_fit_the_data_is_a_profile_error():
    profile = parse_profile(with_("model.patch_size", 3))
    with pytest.raises(ProfileError, match="patch_size 3"):
        profile.runs(image_size=8, channels=1, num_classes=10)


@pytest.mark.parametrize("name", builtin_profiles())
def test_builtin_profiles_load(name):
    profile = resolve_profile(name)
    assert profile.n_runs == len(list(itertools.product(*profile.grid.values())))
    shape = (8, 1, 10) if profile.data.dataset == "digits" else (32, 3, 10)
    runs = profile.runs(*shape)
    assert len(runs) == profile.n_runs == len({r.run_id for r in runs})
    assert profile.description and profile.estimate


def test_builtin_profile_sizes():
    assert {"smoke", "default", "digits-small", "cifar10", "cifar10-paper"} <= set(builtin_profiles())
    assert resolve_profile("digits-small").n_runs == 144             # 4 variants x 3 lr x 3 bs x 2 dropout x 2 widths
    assert resolve_profile("smoke").n_runs == 8
    with pytest.raises(ProfileError, match="smoke"):                 # the message lists the built-in names
        resolve_profile("no-such-profile")


def test_the_zoo_stage_stores_the_profile_beside_the_runs(tmp_path):
    profile = resolve_profile("smoke")
    summary = zoo_stage(profile, tmp_path, workers=1, progress=False, log=lambda *a: None)
    assert summary["done"] == profile.n_runs
    assert Path(tmp_path, "profile.toml").read_text() == profile.source   # `srrbench measures/analyze` read it


def test_a_training_set_size_the_data_cannot_give_is_refused_before_anything_is_written(tmp_path):
    raw = {"data": {"dataset": "digits"}, "model": {"patch_size": 4, "depth": 1, "heads": 2},
           "grid": {"n_train": [150, 5000], "width": [8]}}
    with pytest.raises(UsageError, match="n_train=5000"):
        zoo_stage(parse_profile(raw), tmp_path / "out", progress=False, log=lambda *a: None)
    assert not (tmp_path / "out").exists()


def test_an_unhashable_grid_value_is_a_profile_error():
    with pytest.raises(ProfileError, match="grid.lr"):
        parse_profile(with_("grid.lr", [[0.1]]))
