"""zoo.store: atomic writes, checksummed and safely loaded checkpoints, config/metrics integrity, run locks."""
import hashlib
import io
import json
import os
import pickle
import socket
import subprocess
import sys
import time

import pytest
import torch

from zoo import store as store_module
from zoo.config import DataConfig, RunConfig
from zoo.models import ModelConfig
from zoo.errors import BadValueError
from zoo.store import (LEASE_SECONDS, RunLock, RunStore, StoreError, atomic_write_bytes, load_checkpoint,
                       lock_lease, read_json, save_checkpoint, write_json)
from zoo.train import TrainConfig

CFG = RunConfig(DataConfig(n_train=100), ModelConfig(dim=8, depth=1, heads=2), TrainConfig(max_epochs=2))


def files_in(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


# --- atomic writes ----------------------------------------------------------------------------------------------

def test_atomic_writes_leave_only_the_files(tmp_path):
    write_json(tmp_path / "a" / "m.json", {"x": (1, 2), "y": torch.tensor(0.5)})
    save_checkpoint(tmp_path / "a" / "w.pt", {"w": torch.ones(2)})
    save_checkpoint(tmp_path / "a" / "w.pt", {"w": torch.zeros(2)})           # overwrite in place
    assert files_in(tmp_path) == ["a/m.json", "a/w.pt", "a/w.pt.sha256"]
    assert read_json(tmp_path / "a" / "m.json") == {"x": [1, 2], "y": 0.5}
    assert torch.equal(load_checkpoint(tmp_path / "a" / "w.pt")["w"], torch.zeros(2))


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "m.json"
    target.write_text("old")

    def crash(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(store_module.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new")
    assert target.read_text() == "old" and files_in(tmp_path) == ["m.json"]


# --- checkpoints ------------------------------------------------------------------------------------------------

def test_checkpoint_roundtrip(tmp_path):
    obj = {"model": {"w": torch.randn(3, 4), "b": torch.arange(3)}, "epoch": 7, "lr": 1e-3,
           "history": [{"epoch": 1, "train_loss": 2.3}], "rng": torch.get_rng_state(),
           "gen": torch.Generator().manual_seed(3).get_state(), "none": None, "name": "x"}
    save_checkpoint(tmp_path / "c.pt", obj)
    sha = (tmp_path / "c.pt.sha256").read_text().strip()
    assert sha == hashlib.sha256((tmp_path / "c.pt").read_bytes()).hexdigest()
    back = load_checkpoint(tmp_path / "c.pt")
    assert back.keys() == obj.keys()
    assert torch.equal(back["model"]["w"], obj["model"]["w"]) and torch.equal(back["rng"], obj["rng"])
    assert torch.equal(back["gen"], obj["gen"])
    assert {k: back[k] for k in ("epoch", "lr", "history", "none", "name")} == \
        {k: obj[k] for k in ("epoch", "lr", "history", "none", "name")}


def test_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"w": torch.randn(100)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])                        # killed mid-write by something else
    with pytest.raises(StoreError, match="checksum mismatch") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    # even with a checksum that matches the cut bytes, torch cannot read it: still a StoreError naming the file
    (tmp_path / "c.pt.sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest())
    with pytest.raises(StoreError, match="refused to load") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def test_missing_checksum_is_refused(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"w": torch.ones(1)})
    (tmp_path / "c.pt.sha256").unlink()
    with pytest.raises(StoreError, match="no checksum file c.pt.sha256"):
        load_checkpoint(path)
    with pytest.raises(StoreError, match="cannot read"):
        load_checkpoint(tmp_path / "missing.pt")


class WritesMarker:
    """Unpickling this would call open(marker, "w") (or os.system): the file appearing means code ran."""

    def __init__(self, marker, how):
        self.marker, self.how = str(marker), how

    def __reduce__(self):
        if self.how == "open":
            return open, (self.marker, "w")
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("how", ["open", "system"])
@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_malicious_checkpoint_is_refused_not_executed(tmp_path, how, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"model": {"w": torch.ones(1)}, "x": WritesMarker(marker, how)}
    buffer = io.BytesIO()
    if writer == "torch.save":
        torch.save(payload, buffer)
    else:
        pickle.dump(payload, buffer, protocol=2)
    path.write_bytes(buffer.getvalue())
    (tmp_path / "evil.pt.sha256").write_text(hashlib.sha256(buffer.getvalue()).hexdigest() + "\n")
    assert not marker.exists()
    with pytest.raises(StoreError, match="refused to load") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    assert not marker.exists()


# --- configs and metrics ----------------------------------------------------------------------------------------

def test_prepare_writes_the_canonical_config(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.prepare(CFG)
    assert run_id == CFG.run_id and store.run_ids() == [run_id]
    assert read_json(store.run_dir(run_id) / "config.json") == json.loads(json.dumps(CFG.canonical()))
    assert store.load_config(run_id) == CFG
    assert store.prepare(CFG) == run_id                               # idempotent


def test_config_not_matching_its_directory_is_refused(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.prepare(CFG)
    path = store.run_dir(run_id) / "config.json"
    d = read_json(path)
    d["train"]["lr"] = 0.5
    write_json(path, d)
    with pytest.raises(StoreError, match="does not match its directory") as err:
        store.check_config(run_id)
    assert str(path) in str(err.value)
    with pytest.raises(StoreError):
        store.prepare(CFG)                                            # never trains into someone else's directory
    path.write_text("{not json")
    with pytest.raises(StoreError, match="unreadable JSON"):
        store.check_config(run_id)


def finish(store, run_id, status="done"):
    save_checkpoint(store.ckpt(run_id, "final"), {"w": torch.ones(1)})
    store.write_metrics(run_id, {"status": status, "epochs": 2})


def test_finished_means_valid_metrics_and_final_weights(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.prepare(CFG)
    assert store.metrics(run_id) is None and not store.is_finished(run_id)
    finish(store, run_id)
    assert store.is_finished(run_id) and store.metrics(run_id) == {"run_id": run_id, "status": "done", "epochs": 2}
    # a done run whose final weights are corrupt is not finished
    final = store.ckpt(run_id, "final")
    final.write_bytes(final.read_bytes()[:-10])
    assert store.metrics(run_id) is not None and not store.is_finished(run_id)


@pytest.mark.parametrize("content", ['{"status": "do', "", "\xff", '{"run_id": "someoneelse", "status": "done"}',
                                     '{"epochs": 3}'])
def test_corrupt_metrics_means_unfinished(tmp_path, content):
    store = RunStore(tmp_path)
    run_id = store.prepare(CFG)
    finish(store, run_id)
    (store.run_dir(run_id) / "metrics.json").write_bytes(content.encode("latin-1"))
    assert store.metrics(run_id) is None and not store.is_finished(run_id)


def test_diverged_is_finished_failed_is_retried(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.prepare(CFG)
    store.write_metrics(run_id, {"status": "diverged", "epochs": 1})   # a result: no final weights needed
    assert store.is_finished(run_id)
    store.write_metrics(run_id, {"status": "failed", "error": "DatasetError: missing file"})
    assert store.metrics(run_id)["status"] == "failed"              # reported ...
    assert not store.is_finished(run_id)                            # ... but trained again on the next build


def test_log_and_saved_epochs(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.prepare(CFG)
    history = [{"epoch": 1, "train_loss": 2.0}, {"epoch": 2, "train_loss": 1.5}]
    store.write_log(run_id, history)
    assert store.read_log(run_id) == [{"epoch": 1.0, "train_loss": 2.0}, {"epoch": 2.0, "train_loss": 1.5}]
    for name in ("init", "epoch-0001"):
        save_checkpoint(store.ckpt(run_id, name), {"w": torch.ones(1)})
    finish(store, run_id)
    ckpt = store.run_dir(run_id) / "ckpt"
    assert store.saved_epochs(run_id) == [(0, ckpt / "init.pt"), (1, ckpt / "epoch-0001.pt"), (2, ckpt / "final.pt")]


# --- locks ------------------------------------------------------------------------------------------------------

def test_second_acquire_fails_while_held(tmp_path):
    path = tmp_path / "run" / ".lock"
    first, second = RunLock(path), RunLock(path)
    assert first.acquire()
    assert path.read_text().split()[:2] == [socket.gethostname(), str(os.getpid())]
    assert not second.acquire()                                     # held by a live process (this one)
    first.release()
    assert not path.exists()
    with second:
        assert second.acquire()
    assert not path.exists()                                        # the context manager released it
    second.release()                                                # releasing twice is harmless


def test_lock_of_a_dead_process_is_taken_over(tmp_path):
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(child.stdout)                                    # has exited: no such process any more
    path = tmp_path / ".lock"
    path.write_text(f"{socket.gethostname()} {dead_pid} 0\n")
    lock = RunLock(path)
    assert lock.acquire()
    assert path.read_text().split()[1] == str(os.getpid())
    lock.release()


def test_lock_of_another_host_is_respected(tmp_path):
    path = tmp_path / ".lock"
    path.write_text(f"not-{socket.gethostname()} 1 0\n")           # cannot tell if it is alive: wait for it
    assert not RunLock(path).acquire()
    assert path.read_text().startswith("not-")


# --- lock leases ------------------------------------------------------------------------------------------------

OTHER_HOST = f"not-{socket.gethostname()}"


def write_lock(path, line, age):
    """A lock file as another process left it, last renewed ``age`` seconds ago."""
    path.write_text(line)
    then = time.time() - age
    os.utime(path, (then, then))


def test_lock_line_names_holder_and_lease(tmp_path):
    path = tmp_path / ".lock"
    lock = RunLock(path, lease=42)
    assert lock.acquire()
    host, pid, start, lease, token = path.read_text().split()
    assert (host, pid, float(lease)) == (socket.gethostname(), str(os.getpid()), 42.0)
    assert abs(float(start) - time.time()) < 5 and len(token) == 12
    lock.release()
    assert not path.exists()


@pytest.mark.parametrize("age, taken", [(LEASE_SECONDS - 30, False), (LEASE_SECONDS + 30, True)])
def test_lock_of_another_host_is_taken_over_once_its_lease_expired(tmp_path, age, taken):
    path = tmp_path / ".lock"
    write_lock(path, f"{OTHER_HOST} 4242 0 {LEASE_SECONDS:g} a1b2c3\n", age)    # a worker killed on host A
    lock = RunLock(path)
    assert lock.acquire() is taken
    assert path.read_text().startswith(socket.gethostname() if taken else OTHER_HOST)
    lock.release()


def test_the_holders_lease_decides_not_the_readers(tmp_path):
    path = tmp_path / ".lock"
    write_lock(path, f"{OTHER_HOST} 4242 0 5 a1b2c3\n", 10)                   # its holder promised 5 s
    assert RunLock(path, lease=1000).acquire()
    write_lock(path, f"{OTHER_HOST} 4242 0 1000 a1b2c3\n", 10)                # it promised 1000 s
    assert not RunLock(path, lease=5).acquire()


def test_lock_of_an_older_version_from_another_host_gets_the_default_lease(tmp_path):
    path = tmp_path / ".lock"
    write_lock(path, f"{OTHER_HOST} 4242 0\n", LEASE_SECONDS - 30)            # no lease field: not yet expired
    assert not RunLock(path).acquire()
    write_lock(path, f"{OTHER_HOST} 4242 0\n", LEASE_SECONDS + 30)
    assert RunLock(path).acquire()


def test_expired_lease_of_a_live_pid_on_this_host_is_taken_over(tmp_path):
    # a live PID with a lease not renewed for its whole length is a stopped holder or a reused PID
    path = tmp_path / ".lock"
    write_lock(path, f"{socket.gethostname()} {os.getpid()} 0 60 a1b2c3\n", 61)
    assert RunLock(path).acquire()


def test_a_live_holder_renews_its_lease_and_keeps_the_lock(tmp_path):
    path = tmp_path / ".lock"
    holder = RunLock(path, lease=0.5)                                           # renewed every 0.05 s
    assert holder.acquire()
    first = path.stat().st_mtime
    time.sleep(1.0)                                                             # twice its lease
    assert path.stat().st_mtime > first and not holder.lost
    assert not RunLock(path, lease=0.5).acquire()                               # lease current: respected
    holder.release()
    assert not path.exists()


def test_a_holder_taken_over_after_expiry_knows_it_and_leaves_the_new_lock(tmp_path):
    path = tmp_path / ".lock"
    old = RunLock(path, lease=60)
    assert old.acquire()
    old._stop.set()                                                             # a holder paused past its lease
    then = time.time() - 120
    os.utime(path, (then, then))
    new = RunLock(path)
    assert new.acquire()
    assert not old.renew() and old.lost
    old.release()                                                               # must not remove the new lock
    assert path.exists() and path.read_text().split()[1] == str(os.getpid()) and new.held
    new.release()
    assert not path.exists()


def test_lease_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SRRBENCH_LOCK_LEASE", "90")
    assert lock_lease() == 90.0 and RunLock(tmp_path / ".lock").lease == 90.0
    monkeypatch.delenv("SRRBENCH_LOCK_LEASE")
    assert lock_lease() == LEASE_SECONDS
    for bad in ("0", "-5", "soon", "inf", "nan"):
        monkeypatch.setenv("SRRBENCH_LOCK_LEASE", bad)
        with pytest.raises(BadValueError, match=f"LOCK_LEASE must be a positive number of seconds, got '{bad}'"):
            lock_lease()
