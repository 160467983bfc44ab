"""zoo.runner: a zoo is built once, rebuilt for free, resumed after a kill, and is the same on every executor.

Every training here runs with one torch thread (the fixture below, OMP_NUM_THREADS=1 for the CLI, 1 thread per
joblib/Dask worker): the thread count changes the last bits of a run's floats, and the comparisons are exact.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark.profiles import parse_profile, resolve_profile
from tests.tiny_profile import runs_of
from tests.zoo.test_train import assert_same_weights, without_seconds
from zoo import runner
from zoo.config import DataConfig, RunConfig, ensemble_key
from zoo.models import CRATE, ModelConfig
from zoo.runner import (MODEL_COLUMNS, SHIFT_COLUMNS, build_zoo, cached_dataset, init_model, load_zoo, plan_groups,
                         train_run)
from zoo.store import RunStore, StoreError, load_checkpoint
from zoo.train import TrainConfig, evaluate

FIRST_COLUMNS = ["run_id", "variant", "lr", "batch_size", "dropout", "width", "depth", "n_train", "weight_decay",
                 "seed", "dataset",
                 "status", "reached_target", "epochs", "steps", "seconds", "train_loss", "test_loss",
                 "train_acc", "test_acc", "gap_loss", "gap_acc"]


@pytest.fixture(scope="module")
def smoke():
    """The smoke profile at batch size 64 only: 2 variants x 2 lr, 4 epochs of 5 steps."""
    profile = resolve_profile("smoke")
    return replace(profile, grid={**profile.grid, "batch_size": (64,)})


@pytest.fixture(scope="module")
def smoke_zoo(smoke, tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    summary = build_zoo(runs_of(smoke), out, workers=1, progress=False, log=lambda *a: None)
    return out, summary


def metrics_bytes(out):
    return {p.parent.name: p.read_bytes() for p in sorted(Path(out, "runs").glob("*/metrics.json"))}


def comparable(table):
    """models.csv without wall time, indexed by run id (executors finish in different orders)."""
    return table.drop(columns=["seconds"]).set_index("run_id").sort_index()


# --- one build, then a rebuild ----------------------------------------------------------------------------------

def test_build_writes_models_csv(smoke, smoke_zoo):
    out, summary = smoke_zoo
    runs = runs_of(smoke)
    assert summary["runs"] == summary["trained"] == summary["done"] == 4 and summary["failed"] == 0
    table = load_zoo(out)
    assert list(table.columns[:22]) == FIRST_COLUMNS
    assert list(table.columns) == MODEL_COLUMNS
    assert table["run_id"].tolist() == [cfg.run_id for cfg in runs]             # one row per run, grid order
    assert (table["status"] == "done").all() and (table["epochs"] == 4).all()
    assert sorted(zip(table["variant"], table["lr"], table["batch_size"])) == [
        (v, lr, 64) for v in ("crate", "crate-c") for lr in (0.001, 0.003)]
    assert (table["steps"] == 4 * 5).all()                                     # ceil(300 / 64) = 5 per epoch
    for row, cfg in zip(table.to_dict("records"), runs):
        m = json.loads((out / "runs" / cfg.run_id / "metrics.json").read_text())
        assert row["group_id"] == cfg.group_id and m["run_id"] == cfg.run_id
        for key in ("train_loss", "test_loss", "train_acc", "test_acc", "gap_loss", "gap_acc"):
            assert row[key] == pytest.approx(m[key], rel=1e-15, abs=0), key


def test_run_directory_layout(smoke, smoke_zoo):
    out, _ = smoke_zoo
    cfg = runs_of(smoke)[0]
    run = out / "runs" / cfg.run_id
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    ckpts = [f"ckpt/{n}.pt{s}" for n in ("epoch-0002", "final", "init") for s in ("", ".sha256")]
    assert files == sorted(ckpts + ["config.json", "events.log", "log.csv", "metrics.json"])  # no state/lock/temp
    store = RunStore(out)
    assert [r["epoch"] for r in store.read_log(cfg.run_id)] == [1, 2, 3, 4]
    assert [e for e, _ in store.saved_epochs(cfg.run_id)] == [0, 2, 4]


def test_checkpoints_are_the_runs_weights(smoke, smoke_zoo):
    out, _ = smoke_zoo
    cfg = runs_of(smoke)[-1]
    store = RunStore(out)
    init = load_checkpoint(store.ckpt(cfg.run_id, "init"))
    expected = init_model(cfg).state_dict()                        # a function of the seed alone
    assert all(torch.equal(init[k], expected[k]) for k in expected)
    model = CRATE(cfg.model)
    model.load_state_dict(load_checkpoint(store.ckpt(cfg.run_id, "final")))
    data = cached_dataset(cfg.data, None)
    m = store.metrics(cfg.run_id)
    assert (m["train_loss"], m["train_acc"]) == evaluate(model, data.x_train, data.y_train)
    assert (m["test_loss"], m["test_acc"]) == evaluate(model, data.x_test, data.y_test)


def test_shifted_test_metrics_are_the_final_models_on_the_hand_shifted_test_set(smoke, smoke_zoo):
    """test_loss_shift is evaluate() of the saved final model on the test images + 0.26 N(0, 1) pixel noise drawn
    from the split seed's stream, clipped to [0, 1]; gap_shift = test_loss_shift - train_loss."""
    out, _ = smoke_zoo
    store = RunStore(out)
    table = load_zoo(out).set_index("run_id")
    for cfg in runs_of(smoke):
        model = CRATE(cfg.model)
        model.load_state_dict(load_checkpoint(store.ckpt(cfg.run_id, "final")))
        data = cached_dataset(cfg.data, None)
        pixels = data.x_test * 0.3760 + 0.3053                        # digits' normalisation (zoo.data)
        noise = np.random.default_rng([cfg.data.split_seed, 0x51F7]).standard_normal(tuple(pixels.shape))
        shifted = ((pixels + 0.26 * torch.from_numpy(noise).float()).clamp(0, 1) - 0.3053) / 0.3760
        loss, acc = evaluate(model, shifted, data.y_test)
        m = store.metrics(cfg.run_id)
        assert m["shift"] == "gaussian-noise sigma=0.26 v1"
        assert (m["test_loss_shift"], m["test_acc_shift"]) == (loss, acc)
        assert m["gap_shift"] == m["test_loss_shift"] - m["train_loss"]
        assert m["test_loss_shift"] > m["test_loss"]                  # the noise costs CE
        for key in SHIFT_COLUMNS:
            assert table.loc[cfg.run_id, key] == pytest.approx(m[key], rel=1e-15, abs=0), key


def test_shifted_evaluation_leaves_the_global_rng_alone(smoke, smoke_zoo):
    """It runs at a member's finish while other members may still train: building its model must not draw from the
    generator they use."""
    out, _ = smoke_zoo
    cfg = runs_of(smoke)[0]
    store = RunStore(out)
    final, metrics = load_checkpoint(store.ckpt(cfg.run_id, "final")), store.metrics(cfg.run_id)
    before = torch.get_rng_state()
    assert runner.shifted_test_metrics(cfg, final, metrics, None)["gap_shift"] == metrics["gap_shift"]
    assert torch.equal(torch.get_rng_state(), before)


def test_a_run_recorded_without_the_shift_gets_it_from_its_final_checkpoint(smoke, smoke_zoo, tmp_path):
    """An old zoo (metrics without the shift, or of another shift version) is completed by the next build, in one
    line, without training; a diverged run records NaN under the current shift."""
    out = tmp_path / "zoo"
    shutil.copytree(smoke_zoo[0], out)
    store = RunStore(out)
    runs = runs_of(smoke)
    expected = {cfg.run_id: store.metrics(cfg.run_id) for cfg in runs}
    old, other, diverged = runs[0], runs[1], runs[2]
    for cfg in (old, other, diverged):
        m = {k: v for k, v in store.metrics(cfg.run_id).items() if k not in ("run_id", *SHIFT_COLUMNS, "shift")}
        if cfg is other:
            m.update(shift="gaussian-noise sigma=0.1 v0", test_loss_shift=0.0, test_acc_shift=1.0, gap_shift=0.0)
        if cfg is diverged:
            m.update(status="diverged", test_loss=float("nan"))
        store.write_metrics(cfg.run_id, m)
    logged = []
    summary = build_zoo(runs, out, workers=1, progress=False, log=logged.append)
    assert summary["trained"] == 0 and summary["skipped"] == 4
    lines = [line for line in logged if "shifted test set" in line]
    assert lines == ["zoo zoo: shifted test set (gaussian-noise sigma=0.26 v1) evaluated from the final "
                     "checkpoints of 3 finished run(s) recorded without it (2 with none, 1 with "
                     "'gaussian-noise sigma=0.1 v0')"]
    for cfg in (old, other):
        m = store.metrics(cfg.run_id)
        assert {k: m[k] for k in (*SHIFT_COLUMNS, "shift")} == {k: expected[cfg.run_id][k]
                                                                for k in (*SHIFT_COLUMNS, "shift")}
    m = store.metrics(diverged.run_id)
    assert m["shift"] == "gaussian-noise sigma=0.26 v1" and all(np.isnan(m[k]) for k in SHIFT_COLUMNS)
    table = load_zoo(out).set_index("run_id")
    assert table.loc[old.run_id, "gap_shift"] == pytest.approx(expected[old.run_id]["gap_shift"], rel=1e-15)
    logged.clear()
    build_zoo(runs, out, workers=1, progress=False, log=logged.append)   # nothing left to record
    assert not any("shifted test set" in line for line in logged)


def test_rerun_trains_nothing_and_touches_nothing(smoke, smoke_zoo):
    out, _ = smoke_zoo
    before = metrics_bytes(out)
    finals = {p: p.read_bytes() for p in Path(out, "runs").glob("*/ckpt/final.pt")}
    csv = (out / "models.csv").read_bytes()
    summary = build_zoo(runs_of(smoke), out, workers=1, progress=False, log=lambda *a: None)
    assert summary["trained"] == 0 and summary["skipped"] == summary["runs"] == 4 and summary["done"] == 4
    assert len(before) == 4 and metrics_bytes(out) == before
    assert all(p.read_bytes() == b for p, b in finals.items())
    assert (out / "models.csv").read_bytes() == csv


def test_load_zoo_without_a_build():
    with pytest.raises(FileNotFoundError, match="build the zoo first"):
        load_zoo("/nonexistent/zoo")


# --- failures ---------------------------------------------------------------------------------------------------

def test_a_failing_run_does_not_stop_the_build(smoke, tmp_path, monkeypatch):
    profile = replace(smoke, sections={**smoke.sections, "train": {**smoke.sections["train"], "max_epochs": 2}},
                      grid={**smoke.grid, "lr": (0.001, 1e6)})
    runs = runs_of(profile)                                          # crate, crate-c x lr 0.001, 1e6
    broken = next(c for c in runs if c.model.variant == "crate-c" and c.train.lr == 0.001)
    real_train_ensemble = runner.train_ensemble

    def train_ensemble(models, names, cfgs, data, **kw):             # the broken run fails any ensemble it is in
        if broken.run_id in names:
            raise RuntimeError("boom")
        return real_train_ensemble(models, names, cfgs, data, **kw)
    monkeypatch.setattr(runner, "train_ensemble", train_ensemble)
    logged = []
    summary = build_zoo(runs_of(profile), tmp_path, workers=1, progress=False, log=logged.append)
    assert (summary["done"], summary["diverged"], summary["failed"]) == (1, 2, 1)
    assert any(broken.run_id in line and "RuntimeError: boom" in line for line in logged)
    table = load_zoo(tmp_path).set_index("run_id")
    assert table.loc[broken.run_id, "status"] == "failed"
    assert table.loc[broken.run_id, "error"] == "RuntimeError: boom"
    assert "boom" in RunStore(tmp_path).metrics(broken.run_id)["traceback"]
    for cfg in runs:
        if cfg.train.lr == 1e6:                                      # a result, not an error
            assert table.loc[cfg.run_id, "status"] == "diverged"
            assert table.loc[cfg.run_id, "error"] == "non-finite loss or weights in epoch 1"

    # its ensemble partner was retried alone and diverged as it should; once the cause is gone, the next build
    # retries the failed run and only it
    assert any("retrying its 2 unfinished run(s) one at a time" in line for line in logged)
    monkeypatch.setattr(runner, "train_ensemble", real_train_ensemble)
    summary = build_zoo(runs_of(profile), tmp_path, workers=1, progress=False, log=lambda *a: None)
    assert (summary["trained"], summary["skipped"], summary["done"], summary["failed"]) == (1, 3, 2, 0)


def test_train_run_records_an_unknown_dataset_as_failed(tmp_path):
    cfg = RunConfig(DataConfig(dataset="no-such-data"), ModelConfig(dim=8, depth=1, heads=2),
                    TrainConfig(max_epochs=1))
    result = train_run(cfg, tmp_path)
    assert result["status"] == "failed" and result["run_id"] == cfg.run_id
    assert result["error"].startswith("DatasetError") and "no-such-data" in result["error"]
    stored = RunStore(tmp_path).metrics(cfg.run_id)
    assert stored["status"] == "failed" and stored["variant"] == "crate" and stored["group_id"] == cfg.group_id
    assert not (tmp_path / "runs" / cfg.run_id / ".lock").exists()


def test_a_locked_run_is_left_to_its_owner(smoke, tmp_path):
    cfg = runs_of(smoke)[0]
    store = RunStore(tmp_path)
    store.prepare(cfg)
    lock = store.lock(cfg.run_id)
    assert lock.acquire()                                          # another live process (here: us) trains it
    try:
        assert train_run(cfg, tmp_path) == {"run_id": cfg.run_id, "status": "locked"}
        assert store.metrics(cfg.run_id) is None
    finally:
        lock.release()


# --- kill and resume --------------------------------------------------------------------------------------------

KILL_PROFILE = """
description = "kill/resume test: 4 runs x 20 epochs"
[data]
dataset = "digits"
n_train = 150
n_test = 50
[model]
patch_size = 4
depth = 1
heads = 2
[train]
max_epochs = 20
warmup_epochs = 1
target_ce = 0.0
checkpoint_epochs = [5]
[grid]
variant = ["crate", "crate-c"]
lr = [0.001, 0.003]
batch_size = [32]
dropout = [0.1]
width = [8]
seed = [0]
"""


def srrbench():
    exe = Path(sys.executable).with_name("srrbench")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "benchmark"]


def saved_epoch(store, run_id):
    """The epoch of the run's resumable state, or None if there is none or it is not whole."""
    try:
        return load_checkpoint(store.ckpt(run_id, "state"))["epoch"]
    except StoreError:
        return None


def test_killed_build_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    toml = tmp_path / "kill.toml"
    toml.write_text(KILL_PROFILE)
    profile = resolve_profile(toml)
    runs = runs_of(profile)
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    store = RunStore(killed)
    # the build runs in tmp_path: the repository goes on its path, as in the other subprocess tests
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(srrbench() + ["zoo", "--profile", str(toml), "--out", str(killed), "--workers", "1",
                                          "--quiet"], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        # Kill once a run has finished and another is inside its 20 epochs with a whole saved state. The build
        # is frozen (SIGSTOP) while its files are read, so what is read is exactly what the kill leaves behind.
        deadline = time.monotonic() + 120
        while True:
            finished = [c.run_id for c in runs if (killed / "runs" / c.run_id / "metrics.json").exists()]
            midway = [c.run_id for c in runs if c.run_id not in finished
                      and (killed / "runs" / c.run_id / "ckpt" / "state.pt.sha256").exists()]
            if finished and midway:
                proc.send_signal(signal.SIGSTOP)
                if any(saved_epoch(store, r) in range(1, 15) and store.metrics(r) is None for r in midway):
                    proc.send_signal(signal.SIGKILL)
                    break
                proc.send_signal(signal.SIGCONT)
            assert proc.poll() is None, f"the build ended before it could be killed: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "no run finished in time"
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    done_at_kill = [c.run_id for c in runs if store.metrics(c.run_id) is not None]
    assert 1 <= len(done_at_kill) < len(runs)
    kept = {r: ((killed / "runs" / r / "metrics.json").read_bytes(), store.ckpt(r, "final").read_bytes())
            for r in done_at_kill}
    # what the rerun must resume from: each unfinished run's last whole state (one run at least has one)
    resumable = {c.run_id: saved_epoch(store, c.run_id) for c in runs if c.run_id not in done_at_kill}
    resumable = {r: e for r, e in resumable.items() if e is not None}
    assert resumable and all(1 <= e < 15 for e in resumable.values())

    real_train_ensemble = runner.train_ensemble
    resumed = {}

    def train_ensemble(models, names, cfgs, data, resume=None, **kw):
        resumed.update({name: state["epoch"] for name, state in zip(names, resume) if state is not None})
        return real_train_ensemble(models, names, cfgs, data, resume=resume, **kw)
    monkeypatch.setattr(runner, "train_ensemble", train_ensemble)
    quiet = dict(workers=1, progress=False, log=lambda *a: None)
    summary = build_zoo(runs_of(profile), killed, **quiet)               # what `srrbench zoo` calls, same arguments
    assert summary["done"] == 4 and summary["skipped"] == len(done_at_kill)
    assert resumed == resumable                                 # lost at most the epoch in progress
    for r, (metrics, final) in kept.items():                    # finished runs untouched
        assert (killed / "runs" / r / "metrics.json").read_bytes() == metrics
        assert store.ckpt(r, "final").read_bytes() == final

    monkeypatch.setattr(runner, "train_ensemble", real_train_ensemble)
    build_zoo(runs_of(profile), straight, **quiet)
    for c in runs:
        a = load_checkpoint(store.ckpt(c.run_id, "final"))
        b = load_checkpoint(RunStore(straight).ckpt(c.run_id, "final"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), c.run_id
        assert not store.ckpt(c.run_id, "state").exists()
        log_a = [{k: v for k, v in row.items() if k != "seconds"} for row in store.read_log(c.run_id)]
        log_b = [{k: v for k, v in row.items() if k != "seconds"} for row in RunStore(straight).read_log(c.run_id)]
        assert len(log_a) == 20    # epochs whose train or test CE was not evaluated are NaN in both
        pd.testing.assert_frame_equal(pd.DataFrame(log_a), pd.DataFrame(log_b), check_exact=True)
    pd.testing.assert_frame_equal(comparable(load_zoo(killed)), comparable(load_zoo(straight)))


# --- other executors --------------------------------------------------------------------------------------------

def test_joblib_workers_give_the_same_zoo(smoke, smoke_zoo, tmp_path):
    out, _ = smoke_zoo
    summary = build_zoo(runs_of(smoke), tmp_path, workers=2, progress=False, log=lambda *a: None)
    assert summary["done"] == 4 and summary["trained"] == 4
    pd.testing.assert_frame_equal(comparable(load_zoo(tmp_path)), comparable(load_zoo(out)))


def test_dask_cluster_gives_the_same_zoo(smoke, smoke_zoo, tmp_path):
    distributed = pytest.importorskip("dask.distributed", reason="dask[distributed] is not installed")
    import logging

    out, _ = smoke_zoo
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=logging.ERROR) as cluster:
        summary = build_zoo(runs_of(smoke), tmp_path, scheduler=cluster.scheduler_address, progress=False,
                            log=lambda *a: None)
    assert summary["done"] == 4 and summary["trained"] == 4 and summary["failed"] == 0
    pd.testing.assert_frame_equal(comparable(load_zoo(tmp_path)), comparable(load_zoo(out)))


# --- the runner's groups ---------------------------------------------------------------------------------------

def grid_runs(**grid):
    """The runs of a profile with the given grid (digits: 8x8, 1 channel, 10 classes)."""
    profile = parse_profile({"data": {"dataset": "digits"}, "model": {"patch_size": 4, "depth": 1, "heads": 2},
                             "grid": grid})
    return profile.runs(8, 1, 10)


def shape_of(run):
    return run.model.variant, run.model.dim, run.train.batch_size


def test_runs_differing_in_lr_dropout_seed_share_a_group():
    runs = grid_runs(variant=["crate", "crate-c"], lr=[1e-3, 3e-3], batch_size=[32, 64], dropout=[0.0, 0.1],
                     width=[8, 16], seed=[0, 1])
    groups = plan_groups(runs, max_size=100)
    assert len(runs) == 64 and len(groups) == 2 * 2 * 2 and all(len(g) == 8 for g in groups)
    for g in groups:
        assert len({ensemble_key(r) for r in g}) == 1 and len({shape_of(r) for r in g}) == 1
        assert len({(r.train.lr, r.model.dropout, r.train.seed) for r in g}) == 8
    assert len({ensemble_key(g[0]) for g in groups}) == 8 and len({shape_of(g[0]) for g in groups}) == 8


def test_max_size_chunks_a_group_in_grid_order():
    runs = grid_runs(lr=[1e-3, 3e-3], dropout=[0.0, 0.1], seed=[0, 1], width=[8])          # one group of 8
    groups = plan_groups(runs, max_size=3)
    assert [len(g) for g in groups] == [3, 3, 2]
    assert [r.run_id for g in groups for r in g] == [r.run_id for r in runs]


@pytest.mark.parametrize("workers", [2, 3, 5, 8, 20])
def test_groups_are_split_so_that_no_worker_idles(workers):
    runs = grid_runs(variant=["crate", "crate-c"], lr=[1e-3, 3e-3], seed=[0, 1], width=[8])  # 2 groups of 4
    groups = plan_groups(runs, max_size=8, workers=workers)
    assert len(groups) >= min(workers, len(runs))
    assert all(len({ensemble_key(r) for r in g}) == 1 for g in groups)
    ids = [r.run_id for g in groups for r in g]
    assert sorted(ids) == sorted(r.run_id for r in runs) and len(set(ids)) == len(runs)   # each run once


def test_groups_of_every_planning_hold_every_run_once():
    runs = grid_runs(variant=["crate", "crate-c", "crate-t"], lr=[1e-3, 3e-3, 1e-2], batch_size=[32, 64],
                     seed=[0, 1], width=[8])
    for max_size in (1, 2, 5, 100):
        for workers in (1, 4, 13, 50):
            ids = [r.run_id for g in plan_groups(runs, max_size, workers) for r in g]
            assert sorted(ids) == sorted(r.run_id for r in runs), (max_size, workers)
            assert all(len(g) <= max_size for g in plan_groups(runs, max_size, workers))


def test_build_zoo_checkpoints_do_not_depend_on_the_ensemble_size(profile, tmp_path):
    quiet = dict(workers=1, progress=False, log=lambda *a: None)
    one, grouped = tmp_path / "one", tmp_path / "grouped"
    assert build_zoo(runs_of(profile), one, ensemble_size=1, **quiet)["done"] == 4
    assert build_zoo(runs_of(profile), grouped, **quiet)["done"] == 4          # 2 groups of 2 (the variants)
    runs = profile.runs(8, 1, 10)
    assert len(plan_groups(runs, 8)) == 2
    for run in runs:
        for name in ("final", "epoch-0002"):
            a = load_checkpoint(RunStore(one).ckpt(run.run_id, name))
            b = load_checkpoint(RunStore(grouped).ckpt(run.run_id, name))
            assert_same_weights(a, b)
        m1 = RunStore(one).metrics(run.run_id)
        m2 = RunStore(grouped).metrics(run.run_id)
        assert without_seconds(m1) == without_seconds(m2)
