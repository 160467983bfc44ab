"""`srrbench measures --checkpoint FILE --model MODULE:FACTORY --data NAME`: a saved MLP measured end to end (exit 0,
the row written, the left-out measures listed); each kind of bad input is one line naming it, exit 2."""
import math
import sys

import pandas as pd
import pytest
import torch

import measures
from benchmark.cli import main
from zoo.data import load_dataset

FACTORIES = '''
from torch import nn

def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10))

def mlp_on_4_inputs():
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 10))

def regressor():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 1))

def not_a_module():
    return "mlp"

def broken():
    raise RuntimeError("no such layer")

WIDTH = 8
'''


@pytest.fixture
def saved(tmp_path):
    """(factory file, state dict of its mlp(), a state dict at initialisation) in tmp_path."""
    (tmp_path / "my_models.py").write_text(FACTORIES)
    torch.manual_seed(0)
    namespace = {}
    exec(FACTORIES, namespace)
    init = namespace["mlp"]()
    torch.save(init.state_dict(), tmp_path / "init.pt")
    trained = namespace["mlp"]()
    torch.save(trained.state_dict(), tmp_path / "mlp.pt")
    for name in ("mlp_on_4_inputs", "regressor"):
        torch.save(namespace[name]().state_dict(), tmp_path / f"{name}.pt")
    torch.save(trained, tmp_path / "pickled_module.pt")     # a whole pickled module, not a state dict
    return tmp_path


def run(saved, *args, factory="mlp", checkpoint="mlp.pt"):
    return main(["measures", "--checkpoint", str(saved / checkpoint), "--model", f"{saved / 'my_models.py'}:{factory}",
                 "--data", "digits", *args])


def test_a_saved_mlp_is_measured_and_the_crate_measures_listed_as_left_out(saved, capsys):
    out = saved / "row.csv"
    code = run(saved, "--init-checkpoint", str(saved / "init.pt"), "--names", "num-params", "l2", "l2-dist-init",
               "neg-margin", "srr*", "path-norm", "--out", str(out))
    # path-norm named exactly is refused; without it the command goes through
    assert code == 2 and "'path-norm' cannot be computed here: it reads CRATE's internals" in capsys.readouterr().err
    code = run(saved, "--init-checkpoint", str(saved / "init.pt"), "--names", "num-params", "l2", "l2-dist-init",
               "neg-margin", "srr*", "--out", str(out))
    printed = capsys.readouterr().out
    assert code == 0
    row = pd.read_csv(out)
    assert row.columns.tolist() == ["num-params", "l2", "l2-dist-init", "neg-margin"]
    assert row["num-params"].item() == 64 * 8 + 8 + 8 * 10 + 10
    model = torch.load(saved / "mlp.pt", weights_only=True)
    init = torch.load(saved / "init.pt", weights_only=True)
    weights = ["1.weight", "3.weight"]
    assert row["l2"].item() == pytest.approx(math.sqrt(sum(float(model[k].double().square().sum()) for k in weights)))
    assert row["l2-dist-init"].item() == pytest.approx(
        math.sqrt(sum(float((model[k] - init[k]).double().square().sum()) for k in weights)))
    namespace = {}
    exec(FACTORIES, namespace)
    mlp = namespace["mlp"]()
    mlp.load_state_dict(model)
    data = load_dataset("digits")                        # the training split the command measures on
    expected = measures.compute(mlp, data.x_train, data.y_train, names=["neg-margin"])["neg-margin"].item()
    assert math.isfinite(expected) and row["neg-margin"].item() == pytest.approx(expected, rel=1e-12)
    assert "left out srr: it reads CRATE's internals" in printed and "left out srr-last" in printed
    assert "num-params" in printed and f"-> {out}" in printed


def test_without_init_checkpoint_the_init_measures_are_left_out(saved, capsys):
    assert run(saved, "--names", "l2*") == 0
    assert "left out l2-dist-init: it needs the initial weights" in capsys.readouterr().out


BAD = {
    "missing keys": ({"checkpoint": "regressor.pt"},
                     ["--checkpoint", "regressor.pt does not fit the model (Sequential)",
                      "missing keys 3.weight, 3.bias", "misshaped 1.weight (1, 64) != (8, 64)"]),
    "misshaped keys": ({"checkpoint": "mlp_on_4_inputs.pt"}, ["misshaped 1.weight (3, 4) != (8, 64)"]),
    "a pickled module": ({"checkpoint": "pickled_module.pt"},
                         ["refused to load, not a plain tensor checkpoint", "Sequential", "nothing in it was run"]),
    "no checkpoint file": ({"checkpoint": "nothing.pt"}, ["--checkpoint: ", "cannot read checkpoint", "nothing.pt"]),
    "unknown factory": ({"factory": "resnet"}, ["my_models.py has no 'resnet'", "its callables: broken, mlp"]),
    "not callable": ({"factory": "WIDTH"}, ["my_models.py:WIDTH is not callable (it is int 8)"]),
    "not a module": ({"factory": "not_a_module"}, ["not_a_module() returned a str, not a torch.nn.Module"]),
    "factory fails": ({"factory": "broken"}, ["broken() failed: RuntimeError: no such layer"]),
    "not a classifier": ({"factory": "regressor", "checkpoint": "regressor.pt"},
                         ["gives 1 logit(s) per input, but the labels go up to 9"]),
    "data shape the model rejects": ({"factory": "mlp_on_4_inputs", "checkpoint": "mlp_on_4_inputs.pt"},
                                     ["rejects inputs of shape (1, 8, 8) per sample", "64", "4x3"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2(saved, case, capsys):
    kwargs, words = BAD[case]
    assert run(saved, "--names", "l2", **kwargs) == 2
    err = capsys.readouterr().err
    assert err.startswith("srrbench: error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err


@pytest.mark.parametrize("args, words", [
    (["--model", "no_such_module_here:mlp"], ["cannot import no_such_module_here", "ModuleNotFoundError"]),
    (["--model", "my_models.py"], ["--model must be MODULE:FACTORY"]),
    (["--model", "missing/models.py:mlp"], ["--model: no Python file missing/models.py"]),
    ([], ["--checkpoint needs --model MODULE:FACTORY"]),
])
def test_bad_model_spec_is_one_line_exit_2(saved, args, words, capsys):
    argv = ["measures", "--checkpoint", str(saved / "mlp.pt"), *args]
    if "--data" not in args:
        argv += ["--data", "digits"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("srrbench: error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err


def test_unknown_dataset_is_named(saved, capsys):
    argv = ["measures", "--checkpoint", str(saved / "mlp.pt"), "--model", f"{saved / 'my_models.py'}:mlp",
            "--data", "imagenet"]
    assert main(argv) == 2
    assert "unknown dataset 'imagenet'" in capsys.readouterr().err


def test_zoo_and_checkpoint_are_exclusive_and_checkpoint_flags_need_checkpoint(saved, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["measures", "--zoo", str(saved), "--checkpoint", str(saved / "mlp.pt")])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    assert main(["measures", "--zoo", str(saved), "--model", "a:b", "--data", "digits"]) == 2
    assert "--model, --data go only with --checkpoint" in capsys.readouterr().err
    assert main(["measures", "--zoo", str(saved), "--n-train", "100"]) == 2
    assert "--n-train goes only with --checkpoint" in capsys.readouterr().err


def test_n_train_measures_the_zoo_subset_the_model_was_trained_on(saved):
    """--n-train N draws the training subset a zoo profile's n_train gives: the margin's sample is those images."""
    from zoo.data import load_dataset
    out = saved / "row.csv"
    assert run(saved, "--n-train", "100", "--names", "neg-margin", "--out", str(out)) == 0
    data = load_dataset("digits", n_train=100)
    namespace = {}
    exec(FACTORIES, namespace)
    model = namespace["mlp"]()
    model.load_state_dict(torch.load(saved / "mlp.pt", weights_only=True))
    with torch.no_grad():
        logits = model(data.x_train).double()
    true = logits.gather(1, data.y_train[:, None])[:, 0]
    other = logits.scatter(1, data.y_train[:, None], float("-inf")).max(1).values
    margins = (true - other).sort().values                       # 100 images: the 10th percentile by hand
    position = 0.1 * (len(margins) - 1)
    low = int(position)
    gamma = margins[low] + (position - low) * (margins[low + 1] - margins[low])
    assert pd.read_csv(out)["neg-margin"].item() == pytest.approx(-float(gamma), rel=1e-5)


def test_a_dotted_module_in_the_working_directory(saved, monkeypatch, capsys):
    (saved / "dotted_factories_for_cli_test.py").write_text(FACTORIES)
    monkeypatch.chdir(saved)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(saved))])
    monkeypatch.delitem(sys.modules, "dotted_factories_for_cli_test", raising=False)
    assert main(["measures", "--checkpoint", "mlp.pt", "--model", "dotted_factories_for_cli_test:mlp", "--data",
                 "digits", "--names", "num-params"]) == 0
    assert "num-params" in capsys.readouterr().out
    sys.modules.pop("dotted_factories_for_cli_test", None)


def test_a_model_file_may_import_its_sibling_modules(saved, monkeypatch, capsys):
    package = saved / "elsewhere"
    package.mkdir()
    (package / "sibling_layers_for_cli_test.py").write_text(FACTORIES)
    (package / "entry.py").write_text("from sibling_layers_for_cli_test import mlp\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "sibling_layers_for_cli_test", raising=False)
    assert main(["measures", "--checkpoint", str(saved / "mlp.pt"), "--model", f"{package / 'entry.py'}:mlp",
                 "--data", "digits", "--names", "num-params"]) == 0
    assert "num-params" in capsys.readouterr().out
    sys.modules.pop("sibling_layers_for_cli_test", None)


def test_a_model_file_that_fails_to_import_is_one_line(saved, capsys):
    (saved / "broken_models.py").write_text("import no_such_dependency_xyz\n")
    assert main(["measures", "--checkpoint", str(saved / "mlp.pt"), "--model", f"{saved / 'broken_models.py'}:mlp",
                 "--data", "digits"]) == 2
    err = capsys.readouterr().err
    assert "cannot import" in err and "No module named 'no_such_dependency_xyz'" in err and err.count("\n") == 1
    assert "srrbench_model_broken_models" not in sys.modules


def test_an_official_crate_checkpoint_is_measured_like_the_model_it_loads_into(tmp_path):
    from measures.context import weight_matrices
    from zoo.models import build_model
    from zoo.official import official_state_dict

    def crate(seed):
        torch.manual_seed(seed)
        return build_model("crate", image_size=8, patch_size=2, channels=1, num_classes=10, dim=16, depth=2, heads=2)
    ours, init = crate(0), crate(1)
    torch.save({"state_dict": official_state_dict(ours)}, tmp_path / "crate.pth")   # as the official main.py saves
    torch.save(official_state_dict(init), tmp_path / "init.pth")
    out = tmp_path / "row.csv"
    code = main(["measures", "--checkpoint", str(tmp_path / "crate.pth"), "--official-crate", "--heads", "2",
                 "--init-checkpoint", str(tmp_path / "init.pth"), "--data", "digits",
                 "--names", "l2", "l2-dist-init", "num-params", "--out", str(out)])
    assert code == 0
    row = pd.read_csv(out)
    w, w0 = weight_matrices(ours), weight_matrices(init)
    assert row["l2"].item() == pytest.approx(math.sqrt(sum(float(m.double().square().sum()) for m in w.values())))
    assert row["l2-dist-init"].item() == pytest.approx(
        math.sqrt(sum(float((w[k] - w0[k]).double().square().sum()) for k in w)))
    assert row["num-params"].item() == sum(p.numel() for p in ours.parameters())


@pytest.mark.parametrize("args, message", [
    (["--official-crate"], "--checkpoint needs --official-crate --heads K"),
    (["--heads", "2", "--model", "x.py:f"], "--heads goes only with --official-crate"),
    (["--official-crate", "--heads", "2", "--data", "mnist-like-but-wrong"], "mnist-like-but-wrong"),
    (["--official-crate", "--heads", "0"], "heads must be a positive integer, got 0"),   # given, not missing
])
def test_official_crate_bad_flags_are_one_line_exit_2(tmp_path, capsys, args, message):
    from zoo.models import build_model
    from zoo.official import official_state_dict
    model = build_model("crate", image_size=8, patch_size=2, channels=1, num_classes=10, dim=16, depth=1, heads=2)
    torch.save(official_state_dict(model), tmp_path / "crate.pth")
    data = [] if "--data" in args else ["--data", "digits"]
    assert main(["measures", "--checkpoint", str(tmp_path / "crate.pth"), *args, *data]) == 2
    assert message in capsys.readouterr().err


def test_an_official_crate_for_other_images_than_the_data_is_refused(tmp_path, capsys):
    from zoo.models import build_model
    from zoo.official import official_state_dict
    model = build_model("crate", image_size=16, patch_size=4, channels=1, num_classes=10, dim=16, depth=1, heads=2)
    torch.save(official_state_dict(model), tmp_path / "crate.pth")
    assert main(["measures", "--checkpoint", str(tmp_path / "crate.pth"), "--official-crate", "--heads", "2",
                 "--data", "digits"]) == 2
    assert "16x16 images, but the data's are 8x8" in capsys.readouterr().err
