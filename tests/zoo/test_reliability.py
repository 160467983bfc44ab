"""Faults injected into a built zoo: every corrupt, foreign or locked file is detected, reported in one line naming
it, and redone; never used. Also: diverging runs, two builds on one directory, a lock left by a killed process, and
`srrbench check` on a clean and a corrupted zoo.
"""
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch

from benchmark.cli import main
from benchmark.profiles import resolve_profile
from tests.tiny_profile import TINY_PROFILE, runs_of
from zoo.check import check_zoo
from benchmark.profiles import _TOP_LEVEL, GRID_AXES, AnalysisSettings
from zoo.config import DataConfig, config_hash
from zoo.models import ModelConfig
from zoo.train import TrainConfig
from zoo.runner import build_zoo, load_zoo
from zoo.store import RunLock, RunStore, StoreError, load_checkpoint

ROOT = Path(__file__).resolve().parents[2]



@pytest.fixture(scope="module")
def built(profile, tmp_path_factory):
    out = tmp_path_factory.mktemp("built")
    build_zoo(runs_of(profile), out, workers=1, progress=False, log=lambda *a: None)
    return out


@pytest.fixture
def zoo(built, tmp_path):
    """A private copy of the built zoo, to damage."""
    return Path(shutil.copytree(built, tmp_path / "zoo"))


def rebuild(profile, out):
    lines = []
    summary = build_zoo(runs_of(profile), out, workers=1, progress=False, log=lines.append)
    return summary, [line for line in lines if not line.startswith("zoo ")]   # drop the two summary lines


def run_ids(out):
    return load_zoo(out)["run_id"].tolist()


def snapshot(out, run_id):
    """A run's weights (bytes) and metrics (less the wall time)."""
    run = Path(out, "runs", run_id)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.pop("seconds")
    return {"metrics": metrics, **{name: (run / name).read_bytes() for name in ("ckpt/final.pt", "ckpt/init.pt")}}


class WritesMarker:
    """Unpickling this calls open(marker, "w"): the file appears if, and only if, the pickle is executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def write_malicious_checkpoint(path: Path, marker: Path) -> None:
    """A torch.save file carrying a code-running object, with a matching checksum so only the loader can stop it."""
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(2), "payload": WritesMarker(marker)}, buffer)
    path.write_bytes(buffer.getvalue())
    path.with_name(path.name + ".sha256").write_text(hashlib.sha256(buffer.getvalue()).hexdigest() + "\n")


# --- corrupt files --------------------------------------------------------------------------------------------

def test_truncated_final_checkpoint_is_reported_and_only_its_run_retrained(profile, zoo):
    victim, *others = run_ids(zoo)
    before = {r: snapshot(zoo, r) for r in run_ids(zoo)}
    final = zoo / "runs" / victim / "ckpt" / "final.pt"
    final.write_bytes(final.read_bytes()[: final.stat().st_size // 2])
    summary, lines = rebuild(profile, zoo)
    assert (summary["trained"], summary["skipped"], summary["done"]) == (1, 3, 4)
    assert len(lines) == 1 and str(final) in lines[0] and "checksum mismatch" in lines[0] and victim in lines[0]
    assert snapshot(zoo, victim) == before[victim]               # retrained to the very same bytes
    assert all(snapshot(zoo, r) == before[r] for r in others)    # the others untouched
    assert check_zoo(zoo).ok


@pytest.mark.parametrize("garbage", [b'{"run_id": "', b"", b"\x00\xff not json", b'{"status": "done"}'])
def test_half_written_or_foreign_metrics_are_reported_and_the_run_redone(profile, zoo, garbage):
    victim = run_ids(zoo)[1]
    before = snapshot(zoo, victim)
    metrics = zoo / "runs" / victim / "metrics.json"
    metrics.write_bytes(garbage)
    summary, lines = rebuild(profile, zoo)
    assert (summary["trained"], summary["skipped"]) == (1, 3)
    assert len(lines) == 1 and str(metrics) in lines[0] and victim in lines[0]
    assert json.loads(metrics.read_text())["run_id"] == victim
    assert snapshot(zoo, victim) == before


def test_config_not_matching_its_hash_is_set_aside_and_the_run_redone(profile, zoo):
    victim = run_ids(zoo)[2]
    config = zoo / "runs" / victim / "config.json"
    edited = json.loads(config.read_text())
    edited["train"]["lr"] = 0.5                                  # someone edited a finished run's config
    config.write_text(json.dumps(edited))
    report = check_zoo(zoo)                                      # `check` sees it
    assert not report.ok and len(report.problems) == 1
    assert str(config) in report.problems[0] and config_hash(edited) in report.problems[0]

    summary, lines = rebuild(profile, zoo)                       # the build reports it, sets it aside, redoes it
    assert (summary["trained"], summary["skipped"], summary["done"]) == (1, 3, 4)
    assert len(lines) == 1 and str(config) in lines[0] and "does not match" in lines[0] and "set aside" in lines[0]
    aside = [p for p in (zoo / "runs").iterdir() if p.name.startswith(f"{victim}.corrupt-")]
    assert len(aside) == 1 and json.loads((aside[0] / "config.json").read_text()) == edited   # kept as found
    assert config_hash(json.loads(config.read_text())) == victim and RunStore(zoo).is_finished(victim)
    assert RunStore(zoo).run_ids() == sorted(run_ids(zoo))      # the set-aside copy is not a run
    report = check_zoo(zoo)
    assert report.ok and report.set_aside == 1 and report.finished == 4


# --- foreign files --------------------------------------------------------------------------------------------

def test_code_running_checkpoint_is_refused_by_the_loader(tmp_path):
    marker, path = tmp_path / "executed", tmp_path / "evil.pt"
    write_malicious_checkpoint(path, marker)
    with pytest.raises(StoreError, match="refused to load"):
        load_checkpoint(path)
    assert not marker.exists()


def test_code_running_final_checkpoint_is_reported_and_retrained_never_executed(profile, zoo, tmp_path):
    victim = run_ids(zoo)[0]
    before = snapshot(zoo, victim)
    marker, final = tmp_path / "executed", zoo / "runs" / victim / "ckpt" / "final.pt"
    write_malicious_checkpoint(final, marker)
    assert not check_zoo(zoo).ok and not marker.exists()
    summary, lines = rebuild(profile, zoo)
    assert not marker.exists()
    assert summary["trained"] == 1 and len(lines) == 1 and str(final) in lines[0] and "refused" in lines[0]
    assert snapshot(zoo, victim) == before


def test_profile_name_never_chooses_where_files_go(tmp_path):
    text = 'name = "../../evil"\n' + TINY_PROFILE.replace("max_epochs = 3", "max_epochs = 1").replace(
        "checkpoint_epochs = [2]", "checkpoint_epochs = [1]").replace(
        'variant = ["crate", "crate-c"]', 'variant = ["crate"]').replace("lr = [0.003, 0.01]", "lr = [0.01]")
    (tmp_path / "a" / "b").mkdir(parents=True)
    toml = tmp_path / "a" / "b" / "evil.toml"
    toml.write_text(text)
    out = tmp_path / "a" / "b" / "out"
    profile = resolve_profile(toml)
    assert profile.name == "../../evil"
    build_zoo(runs_of(profile), out, workers=1, progress=False, log=lambda *a: None)
    written = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    assert written == {"a/b/evil.toml"} | {f for f in written if f.startswith("a/b/out/")}
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()


def test_no_profile_key_names_an_output_path():
    keys = set(_TOP_LEVEL) | set(GRID_AXES) | {f.name for cls in (DataConfig, ModelConfig, TrainConfig, AnalysisSettings)
                                               for f in fields(cls)}
    assert "dropout" in keys and "name" in keys                 # the tables are the real ones
    words = {"out", "output", "path", "dir", "directory", "file", "root", "dest"}
    assert not [k for k in keys if words & set(k.split("_"))]


# --- divergence -----------------------------------------------------------------------------------------------

def test_absurd_learning_rate_diverges_with_its_epoch_and_the_build_goes_on(profile, tmp_path):
    absurd = replace(profile, grid={**profile.grid, "lr": (0.01, 1e6)})
    summary = build_zoo(runs_of(absurd), tmp_path, workers=1, progress=False, log=lambda *a: None)
    assert (summary["done"], summary["diverged"], summary["failed"]) == (2, 2, 0)
    table = load_zoo(tmp_path)
    diverged = table[table["lr"] == 1e6]
    assert (diverged["status"] == "diverged").all() and (table[table["lr"] == 0.01]["status"] == "done").all()
    for run_id in diverged["run_id"]:
        m = RunStore(tmp_path).metrics(run_id)
        assert m["diverged_epoch"] == 1 and m["error"] == "non-finite loss or weights in epoch 1"
        assert not (tmp_path / "runs" / run_id / "ckpt" / "final.pt").exists()   # no weights to measure
    summary = build_zoo(runs_of(absurd), tmp_path, workers=1, progress=False, log=lambda *a: None)
    assert summary["trained"] == 0 and summary["diverged"] == 2                    # a result, not retried


# --- concurrency ----------------------------------------------------------------------------------------------

def srrbench(*args):
    exe = Path(sys.executable).with_name("srrbench")
    return ([str(exe)] if exe.exists() else [sys.executable, "-m", "benchmark"]) + list(args)


def cli_env():
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def trainers(out, run_id):
    """(pid of each "start", pid of each "finish") in the run's events.log."""
    events = RunStore(out).events(run_id)
    starts = [line.split()[2] for line in events if line.split()[3] in ("start", "resume")]
    finishes = [line.split()[2] for line in events if line.split()[3] == "finish"]
    return starts, finishes


def test_two_builds_on_one_directory_train_each_run_once(tmp_path):
    toml = tmp_path / "both.toml"
    toml.write_text(TINY_PROFILE.replace("max_epochs = 3", "max_epochs = 4").replace(
        "batch_size = [32]", "batch_size = [16, 32]"))                   # 8 runs of 4 epochs
    out = tmp_path / "zoo"
    command = srrbench("zoo", "--profile", str(toml), "--out", str(out), "--workers", "1", "--quiet")
    procs = [subprocess.Popen(command, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    table = load_zoo(out)
    assert len(table) == 8 and (table["status"] == "done").all()
    by_pid = {}
    for run_id in table["run_id"]:
        starts, finishes = trainers(out, run_id)
        assert len(starts) == 1 and finishes == starts, (run_id, RunStore(out).events(run_id))
        by_pid.setdefault(finishes[0], []).append(run_id)
    assert set(by_pid) <= {str(p.pid) for p in procs}
    assert check_zoo(out).ok and not list(out.glob("runs/*/.lock"))
    print(f"\nconcurrency: runs trained per process: {sorted(len(v) for v in by_pid.values())}")


def test_lock_of_a_killed_build_is_taken_over(tmp_path):
    toml = tmp_path / "locked.toml"
    toml.write_text(TINY_PROFILE.replace("max_epochs = 3", "max_epochs = 8\ntarget_ce = 0.0"))
    out = tmp_path / "zoo"
    proc = subprocess.Popen(srrbench("zoo", "--profile", str(toml), "--out", str(out), "--workers", "1", "--quiet"),
                            env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not list(out.glob("runs/*/.lock")):
            assert proc.poll() is None and time.monotonic() < deadline, "the build never took a lock"
            time.sleep(0.005)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    locks = list(out.glob("runs/*/.lock"))                          # one per run of the ensemble in training
    for lock in locks:
        host, pid = lock.read_text().split()[:2]
        assert (host, int(pid)) == (socket.gethostname(), proc.pid)  # the killed build's locks are left behind
    summary, _ = rebuild(resolve_profile(toml), out)
    assert (summary["locked"], summary["done"], summary["trained"]) == (0, 4, 4)
    assert not list(out.glob("runs/*/.lock"))
    for lock in locks:
        starts, finishes = trainers(out, lock.parent.name)
        assert finishes == [str(os.getpid())]                        # this process took it over and finished it


def dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)                                        # has exited and been reaped


def test_two_takeovers_of_one_stale_lock_leave_one_owner(tmp_path, monkeypatch):
    path = tmp_path / ".lock"
    path.write_text(f"{socket.gethostname()} {dead_pid()} 0\n")
    real_stale, both_judged = RunLock._stale, threading.Barrier(2)

    def judged_together(self, text=None):                          # widen the race: both judge, then both act
        verdict = real_stale(self, text)
        try:
            both_judged.wait(timeout=0.5)
        except threading.BrokenBarrierError:
            pass                                                    # the guard kept the other one out
        return verdict
    monkeypatch.setattr(RunLock, "_stale", judged_together)
    locks, got = [RunLock(path), RunLock(path)], [None, None]
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, locks[i].acquire())) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [False, True]                             # exactly one owner
    owner = locks[got.index(True)]
    assert path.exists() and owner.held
    owner.release()
    assert not path.exists() and not list(tmp_path.glob("*.tmp"))


def test_lock_of_a_live_process_is_respected(profile, zoo):
    victim = run_ids(zoo)[3]
    (zoo / "runs" / victim / "metrics.json").unlink()               # unfinished, and someone alive holds it
    holder = RunStore(zoo).lock(victim)
    assert holder.acquire()
    try:
        summary, _ = rebuild(profile, zoo)
    finally:
        holder.release()
    assert (summary["locked"], summary["trained"]) == (1, 0)
    assert load_zoo(zoo).set_index("run_id").loc[victim, "status"] == "pending"


# --- srrbench check -------------------------------------------------------------------------------------------

def test_check_passes_a_clean_zoo(built, capsys):
    assert main(["check", "--zoo", str(built)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"check {built}: 4 runs: 4 finished, 0 unfinished (resumable, or to redo when corrupt); OK"]


def test_check_names_every_problem_of_a_corrupted_zoo(zoo, capsys):
    a, b, c, d = run_ids(zoo)
    final = zoo / "runs" / a / "ckpt" / "final.pt"
    final.write_bytes(final.read_bytes()[:100])
    (zoo / "runs" / b / "metrics.json").write_text("{")
    config = zoo / "runs" / c / "config.json"
    config.write_text(config.read_text().replace('"depth": 1', '"depth": 2'))
    (zoo / "runs" / d / "measures.json").write_text("[1, 2")
    before = {p: p.read_bytes() for p in zoo.rglob("*") if p.is_file()}
    assert main(["check", "--zoo", str(zoo)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 5 and out[-1] == (f"check {zoo}: 4 runs: 1 finished, 3 unfinished (resumable, or to redo when "
                                         f"corrupt); 4 problem(s)")
    for path, what in ((final, "checksum mismatch"), (zoo / "runs" / b / "metrics.json", "unreadable"),
                       (config, "does not match"), (zoo / "runs" / d / "measures.json", "unreadable JSON")):
        assert sum(str(path) in line and what in line for line in out[:-1]) == 1, (path, out)
    assert {p: p.read_bytes() for p in zoo.rglob("*") if p.is_file()} == before    # check changes nothing
