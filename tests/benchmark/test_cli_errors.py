"""Bad input to `srrbench`: each mistake ends in exactly one line on stderr, "srrbench: error: ...", naming the input
and what is allowed, with exit code 2 and no traceback; --debug shows the traceback instead. Nothing is trained
before a profile's error is found.
"""
import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from benchmark.cli import main
from benchmark.profiles import ProfileError

ROOT = Path(__file__).resolve().parents[2]

BASE = """
description = "cli error tests"
[data]
dataset = "digits"
n_train = 100
n_test = 50
[model]
patch_size = 4
depth = 1
heads = 2
[train]
max_epochs = 1
[grid]
variant = ["crate", "crate-c"]
lr = [0.01]
batch_size = [32]
width = [16]
[measures]
names = ["l2", "srr"]
n_samples = 16
[analysis]
n_boot = 5
"""


def edit(old, new):
    assert old in BASE, old
    return BASE.replace(old, new, 1)


# (profile text, words the one error line must contain)
BAD_PROFILES = {
    "unknown key": (edit("max_epochs = 1", "max_epoch = 1"), ["train.max_epoch", "allowed in [train]", "max_epochs"]),
    "unknown section": ("[optimizer]\nname = 'sgd'\n" + BASE, ["optimizer", "allowed in [top level]", "grid"]),
    "unknown grid axis": (edit("width = [16]", "width = [16]\nheads = [1, 2]"), ["grid.heads", "allowed in [grid]"]),
    "string for a number": (edit("lr = [0.01]", 'lr = ["fast"]'), ["grid.lr", "must be a number", "'fast'"]),
    "string for an int": (edit("heads = 2", 'heads = "two"'), ["model.heads", "must be int", "'two'"]),
    "float for an int": (edit("max_epochs = 1", "max_epochs = 1.5"), ["train.max_epochs", "must be int"]),
    "bool for an int": (edit("width = [16]", "width = [true]"), ["grid.width", "must be int", "True"]),
    "zero batch size": (edit("batch_size = [32]", "batch_size = [0]"), ["grid.batch_size", "positive", "0"]),
    "negative width": (edit("width = [16]", "width = [-16]"), ["grid.width", "positive", "-16"]),
    "zero depth": (edit("depth = 1", "depth = 0"), ["model.depth", "positive"]),
    "negative lr": (edit("lr = [0.01]", "lr = [-0.01]"), ["grid.lr", "positive", "-0.01"]),
    "zero subset": (edit("n_train = 100", "n_train = 0"), ["data.n_train", "positive"]),
    "empty axis": (edit("lr = [0.01]", "lr = []"), ["grid.lr", "empty"]),
    "dropout of 1": (edit("width = [16]", "width = [16]\ndropout = [1.0]"), ["grid.dropout", "[0, 1)"]),
    "unknown variant": (edit('"crate-c"]', '"crate-x"]'), ["grid.variant", "crate-x", "crate-identity"]),
    "crate-t heads*dim_head != dim": (edit('"crate-c"]', '"crate-t"]').replace("heads = 2", "heads = 2\ndim_head = 4"),
                                      ["crate-t", "heads*dim_head = dim", "2*4 = 8 != 16"]),
    "crate-identity heads*dim_head != dim": (edit('"crate-c"]', '"crate-identity"]').replace(
        "heads = 2", "heads = 4\ndim_head = 2"), ["crate-identity", "heads*dim_head = dim", "4*2 = 8 != 16"]),
    "patches do not tile": (edit("patch_size = 4", "patch_size = 3"), ["patch_size 3", "image_size 8"]),
    "single class": (edit("n_test = 50", "n_test = 50\nnum_classes = 1"), ["num_classes=1", "between 2 and 10"]),
    "subset larger than the data": (edit("n_train = 100", "n_train = 5000"), ["n_train=5000", "images available"]),
    "unknown dataset": (edit('dataset = "digits"', 'dataset = "imagenet"'), ["imagenet", "digits, cifar10"]),
    "real dataset without a data dir": (edit('dataset = "digits"', 'dataset = "mnist"'),
                                        ["mnist", "--data-dir is required", "train-images-idx3-ubyte"]),
    "unknown measure": (edit('names = ["l2", "srr"]', 'names = ["l2", "srr-typo"]'),
                        ["unknown measure 'srr-typo'", "available:", "path-norm"]),
    "unknown measure option": (edit("n_samples = 16", "n_samples = 16\nepsilon = 0.5"),
                               ["epsilon", "allowed:", "eps_sq"]),
    "measure option of the wrong type": (edit("n_samples = 16", 'n_samples = "16"'),
                                         ["measure option n_samples", "must be int", "'16'"]),
    "non-positive measure option": (edit("n_samples = 16", "n_samples = 16\nmc_samples = 0"),
                                    ["mc_samples", "positive"]),
    "measure names not a list": (edit('names = ["l2", "srr"]', "names = 3"), ["measures.names", "list"]),
    "unknown analysis key": (edit("n_boot = 5", "n_boot = 5\nlevel = 0.9"), ["analysis.level", "gap, n_boot, seed"]),
    "unknown gap": (edit("n_boot = 5", 'n_boot = 5\ngap = "gap_mse"'), ["analysis.gap", "gap_mse", "gap_loss"]),
    "invalid toml": (BASE + "\n[grid\n", ["invalid TOML", "line"]),
}


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, words):
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("srrbench: error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize("case", list(BAD_PROFILES))
def test_bad_profile_is_one_line_exit_2_and_trains_nothing(case, tmp_path, capsys):
    text, words = BAD_PROFILES[case]
    profile = tmp_path / "bad.toml"
    profile.write_text(text)
    code, _, err = run_cli(capsys, "run", "--profile", str(profile), "--out", str(tmp_path / "out"), "--workers", "1",
                           "--quiet")
    assert_one_line_error(code, err, words)
    assert not (tmp_path / "out" / "runs").exists()


def test_unknown_profile_name_lists_the_builtin_ones(tmp_path, capsys):
    code, _, err = run_cli(capsys, "zoo", "--profile", "smok", "--out", str(tmp_path))
    assert_one_line_error(code, err, ["unknown profile 'smok'", "smoke", "default", ".toml"])


def test_missing_profile_file_is_named(tmp_path, capsys):
    code, _, err = run_cli(capsys, "zoo", "--profile", str(tmp_path / "nope.toml"), "--out", str(tmp_path))
    assert_one_line_error(code, err, [str(tmp_path / "nope.toml"), "does not exist"])


# --- data directories ------------------------------------------------------------------------------------------

def idx(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_mnist(directory: Path, labels_train, labels_test) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, labels in (("train", labels_train), ("t10k", labels_test)):
        labels = np.asarray(labels, dtype=np.uint8)
        images = np.zeros((len(labels), 28, 28), dtype=np.uint8)
        (directory / f"{prefix}-images-idx3-ubyte").write_bytes(idx(images, 0x803))
        (directory / f"{prefix}-labels-idx1-ubyte").write_bytes(idx(labels, 0x801))


def wrong_files(d: Path):
    d.mkdir()
    (d / "data_batch_1").write_bytes(b"not mnist")
    (d / "readme.txt").write_text("hello")


def single_class(d: Path):
    write_mnist(d, [3] * 20, [3] * 10)


def empty(d: Path):
    write_mnist(d, [], [])


def truncated(d: Path):
    write_mnist(d, list(range(10)) * 2, list(range(10)))
    path = d / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])


def not_idx(d: Path):
    write_mnist(d, list(range(10)) * 2, list(range(10)))
    (d / "t10k-labels-idx1-ubyte").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))


@pytest.mark.parametrize("make, words", [
    (wrong_files, ["mnist: missing", "train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "expected the MNIST"]),
    (single_class, ["the train split holds 20 images of 1 class(es)", "at least two classes"]),
    (empty, ["the train split holds 0 images", "at least two classes"]),
    (truncated, ["train-images-idx3-ubyte is truncated or padded"]),
    (not_idx, ["t10k-labels-idx1-ubyte is not an IDX file", "magic 0x00000801 expected"]),
])
def test_bad_data_directory_is_one_line_exit_2(make, words, tmp_path, capsys):
    data = tmp_path / "data"
    make(data)
    profile = tmp_path / "mnist.toml"
    profile.write_text(edit('dataset = "digits"\nn_train = 100\nn_test = 50', 'dataset = "mnist"'))
    code, _, err = run_cli(capsys, "zoo", "--profile", str(profile), "--out", str(tmp_path / "out"), "--data-dir",
                           str(data), "--quiet")
    assert_one_line_error(code, err, words)
    assert not (tmp_path / "out" / "runs").exists()


def test_missing_data_directory_is_named(tmp_path, capsys):
    profile = tmp_path / "mnist.toml"
    profile.write_text(edit('dataset = "digits"', 'dataset = "mnist"'))
    code, _, err = run_cli(capsys, "zoo", "--profile", str(profile), "--out", str(tmp_path / "out"), "--data-dir",
                           str(tmp_path / "nowhere"), "--quiet")
    assert_one_line_error(code, err, [str(tmp_path / "nowhere"), "does not exist"])


# --- other commands ---------------------------------------------------------------------------------------------

def test_measures_on_a_directory_that_is_not_a_zoo(tmp_path, capsys):
    code, _, err = run_cli(capsys, "measures", "--zoo", str(tmp_path), "--names", "l2", "--workers", "1", "--quiet")
    assert_one_line_error(code, err, [str(tmp_path / "models.csv")])


def test_unknown_measure_on_the_command_line(tmp_path, capsys):
    (tmp_path / "models.csv").write_text("run_id,status\n")
    code, _, err = run_cli(capsys, "measures", "--zoo", str(tmp_path), "--names", "l3", "--quiet")
    assert_one_line_error(code, err, ["unknown measure 'l3'", "available:", "l2"])


def test_zero_workers(tmp_path, capsys):
    code, _, err = run_cli(capsys, "zoo", "--profile", "smoke", "--out", str(tmp_path), "--workers", "0")
    assert_one_line_error(code, err, ["--workers must be >= 1", "got 0"])


def test_zero_ensemble_size(tmp_path, capsys):
    code, _, err = run_cli(capsys, "zoo", "--profile", "smoke", "--out", str(tmp_path), "--ensemble-size", "0")
    assert_one_line_error(code, err, ["--ensemble-size must be >= 1", "got 0"])
    assert not (tmp_path / "runs").exists()


def test_check_of_a_directory_that_is_not_a_zoo(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "check", "--zoo", str(tmp_path))
    assert code == 1 and f"{tmp_path / 'runs'}: no runs directory" in out


# --- --debug ------------------------------------------------------------------------------------------------------

def test_debug_raises_instead_of_one_line(tmp_path):
    profile = tmp_path / "bad.toml"
    profile.write_text(BAD_PROFILES["unknown key"][0])
    with pytest.raises(ProfileError, match="train.max_epoch"):
        main(["zoo", "--profile", str(profile), "--out", str(tmp_path / "out"), "--debug"])


def test_console_script_prints_one_line_and_a_traceback_only_with_debug(tmp_path):
    profile = tmp_path / "bad.toml"
    profile.write_text(BAD_PROFILES["negative width"][0])
    exe = Path(sys.executable).with_name("srrbench")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "benchmark"]
    command += ["zoo", "--profile", str(profile), "--out", str(tmp_path / "out")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    plain = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert plain.returncode == 2 and plain.stdout == ""
    message = "profile 'bad': [model] with grid.width = -16: model.dim must be a positive integer, got -16"
    assert plain.stderr == f"srrbench: error: {message}\n"
    debug = subprocess.run(command + ["--debug"], capture_output=True, text=True, env=env, timeout=60)
    assert debug.returncode == 1 and debug.stderr.startswith("Traceback (most recent call last):")
    assert debug.stderr.rstrip().endswith(f"benchmark.profiles.ProfileError: {message}")


# --- a bug is not bad input -----------------------------------------------------------------------------------------

def assert_internal_error(code, err, kind, message, where):
    assert code == 3
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"srrbench: internal error (a bug, not your input): {kind}: {message} in {where}"), err
    assert lines[0].endswith("rerun with --debug for the traceback") and "Traceback" not in err


def test_a_keyerror_from_our_code_is_a_bug_not_bad_input(monkeypatch, capsys):
    def profiles_table():
        return {}["width"]                                           # the kind of KeyError a bug raises
    monkeypatch.setattr("benchmark.pipeline.profiles_table", profiles_table)
    code, _, err = run_cli(capsys, "profiles")
    assert_internal_error(code, err, "KeyError", "'width'", "profiles_table (test_cli_errors.py:")


@pytest.mark.parametrize("error", [ValueError("bad shape"), FileNotFoundError("/nowhere/x.pt")])
def test_builtin_errors_inside_the_zoo_stage_are_bugs(error, monkeypatch, tmp_path, capsys):
    def plan_groups(*args, **kwargs):
        raise error
    monkeypatch.setattr("zoo.runner.plan_groups", plan_groups)
    code, _, err = run_cli(capsys, "zoo", "--profile", "smoke", "--out", str(tmp_path), "--workers", "1", "--quiet")
    assert_internal_error(code, err, type(error).__name__, str(error), "plan_groups")
    with pytest.raises(type(error)):
        main(["zoo", "--profile", "smoke", "--out", str(tmp_path), "--workers", "1", "--quiet", "--debug"])


def test_a_filenotfounderror_inside_the_measures_stage_is_a_bug(monkeypatch, tmp_path, capsys):
    (tmp_path / "models.csv").write_text("run_id,status\n")         # a zoo directory: the user's input is fine
    def compute_zoo(*args, **kwargs):
        raise FileNotFoundError("runs/abc/ckpt/final.pt")
    monkeypatch.setattr("measures.compute_zoo", compute_zoo)
    code, _, err = run_cli(capsys, "measures", "--zoo", str(tmp_path), "--names", "l2", "--quiet")
    assert_internal_error(code, err, "FileNotFoundError", "runs/abc/ckpt/final.pt", "compute_zoo")


def test_analyze_without_measures_names_the_stage_to_run(tmp_path, capsys):
    (tmp_path / "models.csv").write_text("run_id,status\n")
    code, _, err = run_cli(capsys, "analyze", "--zoo", str(tmp_path))
    assert_one_line_error(code, err, [str(tmp_path / "measures.csv"), "not found", "srrbench measures --zoo"])


def test_user_errors_are_usage_errors_and_keep_their_builtin_type():
    from zoo import DatasetError, MissingInputError, StoreError, UnknownNameError, UsageError
    assert issubclass(DatasetError, ValueError) and issubclass(DatasetError, UsageError)
    assert issubclass(StoreError, RuntimeError) and issubclass(StoreError, UsageError)
    assert issubclass(MissingInputError, FileNotFoundError)
    assert str(UnknownNameError("unknown measure 'x'")) == "unknown measure 'x'"   # not KeyError's quoted repr


def test_a_non_positive_n_boot_is_bad_input(tmp_path, capsys):
    (tmp_path / "models.csv").write_text("run_id,status\n")
    (tmp_path / "measures.csv").write_text("run_id\n")
    code, _, err = run_cli(capsys, "analyze", "--zoo", str(tmp_path), "--n-boot", "-1")
    assert_one_line_error(code, err, ["--n-boot", "-1"])


def test_ranking_against_a_gap_the_zoo_did_not_record(tmp_path, capsys):
    """A zoo built before the shifted test set: `analyze --gap gap_shift` says how to record it."""
    (tmp_path / "models.csv").write_text("run_id,status,reached_target,width,gap_loss\nr1,done,True,16,0.1\n")
    (tmp_path / "measures.csv").write_text("run_id,l2\nr1,1.0\n")
    code, _, err = run_cli(capsys, "analyze", "--zoo", str(tmp_path), "--gap", "gap_shift", "--quiet")
    assert_one_line_error(code, err, [str(tmp_path / "models.csv"), "has no gap_shift column", "srrbench zoo"])


# --- --scheduler ----------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_nothing_trained(out: Path):
    assert not list(out.rglob("metrics.json")) and not list(out.rglob("*.pt"))


def test_a_scheduler_nobody_listens_on_is_bad_input_found_before_training(monkeypatch, tmp_path, capsys):
    pytest.importorskip("dask.distributed", reason="dask[distributed] is not installed")
    monkeypatch.setattr("zoo.runner.SCHEDULER_TIMEOUT", 1)              # dask's default is 30 s
    address = f"tcp://127.0.0.1:{free_port()}"
    code, _, err = run_cli(capsys, "zoo", "--profile", "smoke", "--out", str(tmp_path), "--scheduler", address,
                           "--quiet")
    assert_one_line_error(code, err, [f"--scheduler {address}: no Dask scheduler answered within 1 s",
                                      "dask scheduler", "host and port"])
    assert_nothing_trained(tmp_path)


def test_a_scheduler_address_where_another_service_answers(monkeypatch, tmp_path, capsys):
    """dask reads an HTTP reply's bytes as a frame length (a MemoryError of exbibytes): still the address's fault."""
    pytest.importorskip("dask.distributed", reason="dask[distributed] is not installed")
    monkeypatch.setattr("zoo.runner.SCHEDULER_TIMEOUT", 5)
    server = socket.create_server(("127.0.0.1", 0))

    def answer_http():
        with server:
            connection, _ = server.accept()
            with connection:
                connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    threading.Thread(target=answer_http, daemon=True).start()
    address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
    code, _, err = run_cli(capsys, "zoo", "--profile", "smoke", "--out", str(tmp_path), "--scheduler", address,
                           "--quiet")
    assert_one_line_error(code, err, [f"--scheduler {address}: something answered that is not a Dask scheduler",
                                      "8786"])
    assert_nothing_trained(tmp_path)


def test_a_malformed_scheduler_address(tmp_path, capsys):
    pytest.importorskip("dask.distributed", reason="dask[distributed] is not installed")
    code, _, err = run_cli(capsys, "zoo", "--profile", "smoke", "--out", str(tmp_path), "--scheduler", "10.0.0.5",
                           "--quiet")
    assert_one_line_error(code, err, ["--scheduler 10.0.0.5: not a Dask scheduler address", "tcp://host:port"])


def test_scheduler_without_dask_installed_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "dask.distributed", None)          # `import dask.distributed` fails
    code, _, err = run_cli(capsys, "run", "--profile", "smoke", "--out", str(tmp_path), "--scheduler",
                           "tcp://10.0.0.5:8786", "--quiet")
    assert_one_line_error(code, err, ["--scheduler tcp://10.0.0.5:8786 needs dask.distributed",
                                      'pip install -e ".[dask]"'])
    assert_nothing_trained(tmp_path)
