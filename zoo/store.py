"""The run store: one directory per run, named by the hash of its config, written atomically.

    OUT/runs/<run_id>/config.json      canonical config (its hash must equal the directory name)
                      metrics.json     written last: its presence means the run is finished
                      log.csv          one row per epoch
                      events.log       one appended line per training start, resume and finish (host, pid)
                      .lock            'host pid start lease token' while a process trains it; a lease renewed
                                       every lease/10 s (default 300 s, $SRRBENCH_LOCK_LEASE), see RunLock
                      ckpt/init.pt, ckpt/epoch-0005.pt, ckpt/final.pt   model weights
                      ckpt/state.pt    full resumable state (optimizer, scheduler, RNG), removed when done
                      *.sha256         checksum beside every checkpoint; a file without a matching one is corrupt

Checkpoints are read with ``torch.load(weights_only=True)``: a file that would need arbitrary unpickling (a
foreign or malicious file) is refused, never executed.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import socket
import tempfile
import threading
import time
from pathlib import Path

import torch

from .config import RunConfig
from .errors import BadValueError, MissingInputError, UsageError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


SET_ASIDE = ".corrupt-"  # run directories renamed <id>.corrupt-<time> were found untrustworthy and left for inspection


class StoreError(UsageError, RuntimeError):
    """A file in the store is corrupt, foreign or inconsistent; the message names it (the user's data, not a bug)."""


_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results should be as readable as any other file
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, tuple):
        return list(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"cannot write {type(o).__name__} to JSON")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StoreError(f"{path}: unreadable JSON ({err.__class__.__name__}: {err})") from None


def save_checkpoint(path: Path, obj) -> None:
    """torch.save to bytes, then the file and its checksum, each atomically."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    atomic_write_text(path.with_name(path.name + ".sha256"), hashlib.sha256(data).hexdigest() + "\n")


def load_checkpoint(path: Path):
    """Load a checkpoint written by ``save_checkpoint``; a missing checksum, a mismatch or a file that needs
    arbitrary unpickling raises StoreError (nothing in it is executed)."""
    sha_path = path.with_name(path.name + ".sha256")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise StoreError(f"{path}: cannot read checkpoint ({err})") from None
    if not sha_path.exists():
        raise StoreError(f"{path}: no checksum file {sha_path.name}; the checkpoint is incomplete or not ours")
    if hashlib.sha256(data).hexdigest() != sha_path.read_text().strip():
        raise StoreError(f"{path}: checksum mismatch, the checkpoint is truncated or altered")
    return load_weights_only(data, path)


def load_foreign_checkpoint(path: Path):
    """Load a checkpoint written by another program (no checksum of ours: an official CRATE ``.pth``, a user's
    state dict) with the same safe loader: a missing file raises MissingInputError, one that needs arbitrary
    unpickling StoreError."""
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except OSError as err:
        raise MissingInputError(f"{path}: cannot read checkpoint ({err.strerror or err})") from None
    return load_weights_only(data, path)


def load_weights_only(data: bytes, path: Path):
    """``torch.load`` of a checkpoint's bytes with ``weights_only=True`` onto the CPU: tensors and plain containers
    only. A file that needs any other global raises StoreError naming it (nothing in it is executed)."""
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as err:  # weights_only refuses any global it does not know: never executes it
        # torch's message opens with advice to retry with weights_only=False; keep only what names the cause
        text = str(err)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        cause = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
        reason = (f"it refers to {found.group(1)}" if found else
                  f"{err.__class__.__name__}: {cause.group(1) if cause else next(iter(text.splitlines()), '')}")
        raise StoreError(f"{path}: refused to load, not a plain tensor checkpoint ({reason}); nothing in it was "
                         f"run") from None


# A run lock is a lease: its holder renews it (the lock file's mtime) every LEASE_SECONDS / HEARTBEATS_PER_LEASE
# seconds from a background thread, and a lock not renewed for its lease is stale on every host. So a worker
# killed on another host (whose PID cannot be checked from here) blocks its runs for at most one lease. The lease
# must exceed any pause of a live holder and the clock difference between the hosts sharing a zoo directory.
LEASE_SECONDS = 300.0
HEARTBEATS_PER_LEASE = 10
LEASE_ENV = "SRRBENCH_LOCK_LEASE"   # seconds; the holder writes its lease into the lock, so readers use the holder's


def lock_lease() -> float:
    """The lease of locks taken by this process: ``$SRRBENCH_LOCK_LEASE`` seconds, else ``LEASE_SECONDS``."""
    text = os.environ.get(LEASE_ENV)
    if text is None:
        return LEASE_SECONDS
    try:
        lease = float(text)
    except ValueError:
        lease = float("nan")
    if not lease > 0 or lease == float("inf"):
        raise BadValueError(f"{LEASE_ENV} must be a positive number of seconds, got {text!r}")
    return lease


class RunLock:
    """An exclusive lock file per run, held as a renewed lease.

    The lock file holds ``host pid start lease token``. Its holder renews it by touching it every
    ``lease / HEARTBEATS_PER_LEASE`` seconds from a daemon thread while it holds it. Another process takes it over
    when its lease has expired (mtime older than the holder's lease, whatever the host) or, on the holder's own
    host, at once when the holder's PID is dead; a live holder, which keeps renewing, is never taken over.

    The owner line is written to a private file first and hard-linked into place, so a lock appears whole or not at
    all, even when its process is killed while taking it. Taking over a stale lock, and releasing one not renewed
    for half a lease, are serialised by ``flock`` on a guard file (released by the kernel when its holder dies):
    two processes that find the same stale lock cannot both remove it, the second removing the first's fresh lock,
    and a holder whose lease expired (``lost``) never removes the lock of the process that took over.
    """

    def __init__(self, path: Path, lease: float | None = None):
        self.path = path
        self.lease = lock_lease() if lease is None else float(lease)
        self.held = False
        self.lost = False   # set by the heartbeat when the lock file is no longer ours (taken over after expiry)
        self._owner = ""
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        token = os.urandom(6).hex()
        owner = f"{socket.gethostname()} {os.getpid()} {time.time():.0f} {self.lease:g} {token}\n"
        mine = self.path.with_name(f"{self.path.name}.{socket.gethostname()}.{os.getpid()}.{token}.tmp")
        mine.write_text(owner)
        try:
            for _ in range(3):
                try:
                    os.link(mine, self.path)
                except FileExistsError:
                    if self._take_over():
                        continue
                    return False
                except OSError:  # a filesystem without hard links: exclusive create, then write
                    if not self._create(owner):
                        if self._take_over():
                            continue
                        return False
                self._hold(owner)
                return True
            return False
        finally:
            mine.unlink(missing_ok=True)

    def _hold(self, owner: str) -> None:
        self.held, self.lost, self._owner = True, False, owner
        self._renewed = time.monotonic()
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name=f"lease {self.path}", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease / HEARTBEATS_PER_LEASE):
            if not self.renew():
                return

    def renew(self) -> bool:
        """Touch the lock so its lease runs from now; False (and ``lost``) when it is no longer ours."""
        try:
            if self.path.read_text() != self._owner:
                raise FileNotFoundError
            os.utime(self.path)
            self._renewed = time.monotonic()
            return True
        except OSError:  # removed, replaced by another holder's lock, or its directory set aside
            self.lost = True
            return False

    def _create(self, owner: str) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(owner)
        return True

    @contextlib.contextmanager
    def _guarded(self):
        if fcntl is None:  # no flock (Windows): takeovers and releases are not serialised
            yield
            return
        with open(self.path.with_name(self.path.name + ".guard"), "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            yield

    def _take_over(self) -> bool:
        """Remove the lock if it is stale; True when the caller should try to take it again."""
        with self._guarded():
            try:
                text = self.path.read_text()
            except FileNotFoundError:
                return True  # released meanwhile: try again, without removing what someone may be creating now
            if not self._stale(text):
                return False
            self.path.unlink(missing_ok=True)
            return True

    def _stale(self, text: str) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        fields = text.split()
        if len(fields) not in (3, 5):
            return age > 60   # half-written or foreign: stale only once it is old enough not to be mid-write
        host, pid = fields[0], fields[1]
        try:
            lease = float(fields[3]) if len(fields) == 5 else LEASE_SECONDS   # 3 fields: a lock of an older version
            pid = int(pid)
        except ValueError:
            return age > 60
        if age > lease:
            return True
        if host != socket.gethostname():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:   # alive, another user's
            return False
        return False

    def release(self) -> None:
        if not self.held:
            return
        self._stop.set()
        if self._beat is not None and self._beat is not threading.current_thread():
            self._beat.join()
        self._beat = None
        # renewed within half a lease: no other process can judge the lock stale now, so no takeover can race
        # this removal; a holder paused longer removes it only under the guard, and only if it is still its own
        recent = time.monotonic() - self._renewed < self.lease / 2
        with contextlib.nullcontext() if recent else self._guarded():
            try:
                ours = self.path.read_text() == self._owner
            except FileNotFoundError:
                ours = False
            if ours:
                self.path.unlink(missing_ok=True)
            else:
                self.lost = True
        self.held = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


class RunStore:
    """The runs of one zoo directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.runs_dir = self.root / "runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def ckpt(self, run_id: str, name: str) -> Path:
        return self.run_dir(run_id) / "ckpt" / f"{name}.pt"

    def lock(self, run_id: str) -> RunLock:
        return RunLock(self.run_dir(run_id) / ".lock")

    # --- config -------------------------------------------------------------------------------------
    def prepare(self, cfg: RunConfig) -> str:
        """Create the run's directory with its config; an existing config that does not match is an error."""
        run_id = cfg.run_id
        path = self.run_dir(run_id) / "config.json"
        if path.exists():
            self.check_config(run_id)
        else:
            write_json(path, cfg.canonical())
        return run_id

    def check_config(self, run_id: str) -> RunConfig:
        from .config import config_hash
        path = self.run_dir(run_id) / "config.json"
        d = read_json(path)
        if config_hash(d) != run_id:
            raise StoreError(f"{path}: config hash {config_hash(d)} does not match its directory {run_id}")
        try:
            return RunConfig.from_dict(d)
        except (TypeError, ValueError, KeyError) as err:
            raise StoreError(f"{path}: not a run config of this version ({err})") from None

    def load_config(self, run_id: str) -> RunConfig:
        return self.check_config(run_id)

    # --- status -------------------------------------------------------------------------------------
    def metrics(self, run_id: str) -> dict | None:
        """The finished run's metrics, or None if it has not finished (or its metrics file is corrupt)."""
        path = self.run_dir(run_id) / "metrics.json"
        if not path.exists():
            return None
        try:
            m = read_json(path)
        except StoreError:
            return None
        if m.get("run_id") != run_id or "status" not in m:
            return None
        return m

    def is_finished(self, run_id: str) -> bool:
        m = self.metrics(run_id)
        if m is None or m["status"] not in ("done", "diverged"):  # a failed run is reported, then retried
            return False
        if m["status"] == "done":  # a finished run's final weights must be intact too
            try:
                load_checkpoint(self.ckpt(run_id, "final"))
            except StoreError:
                return False
        return True

    def run_ids(self) -> list[str]:
        """Ids of the run directories (directories set aside as corrupt are not runs)."""
        if not self.runs_dir.exists():
            return []
        return sorted(p.name for p in self.runs_dir.iterdir()
                      if (p / "config.json").exists() and SET_ASIDE not in p.name)

    def set_aside(self, run_id: str) -> Path | None:
        """Rename a run directory that cannot be trusted to ``<id>.corrupt-<time>``, kept for inspection and
        never read again; returns the new path (None if another process moved it first)."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for n in range(100):
            target = self.runs_dir / f"{run_id}{SET_ASIDE}{stamp}{f'-{n}' if n else ''}"
            if target.exists():
                continue
            try:
                os.rename(self.run_dir(run_id), target)
            except FileNotFoundError:
                return None
            return target
        raise StoreError(f"{self.run_dir(run_id)}: cannot set it aside, too many {SET_ASIDE} copies")

    # --- writing ------------------------------------------------------------------------------------
    def write_log(self, run_id: str, history: list[dict]) -> None:
        if not history:
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
        atomic_write_text(self.run_dir(run_id) / "log.csv", buffer.getvalue())

    def write_metrics(self, run_id: str, metrics: dict) -> None:
        write_json(self.run_dir(run_id) / "metrics.json", {"run_id": run_id, **metrics})

    def record_event(self, run_id: str, event: str) -> None:
        """Append ``<time> <host> <pid> <event>`` to the run's events.log: who trained what, and when. One small
        O_APPEND write, so concurrent writers never interleave inside a line."""
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {socket.gethostname()} {os.getpid()} {event}\n"
        fd = os.open(self.run_dir(run_id) / "events.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def events(self, run_id: str) -> list[str]:
        """The run's events.log lines (empty when it was never trained)."""
        path = self.run_dir(run_id) / "events.log"
        return path.read_text().splitlines() if path.exists() else []

    def read_log(self, run_id: str) -> list[dict]:
        path = self.run_dir(run_id) / "log.csv"
        if not path.exists():
            return []
        with open(path, newline="") as f:
            return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]

    def saved_epochs(self, run_id: str) -> list[tuple[int, Path]]:
        """(epoch, path) of every weights checkpoint: init as 0, chosen epochs, final as its epoch."""
        out = []
        ckpt_dir = self.run_dir(run_id) / "ckpt"
        if (ckpt_dir / "init.pt").exists():
            out.append((0, ckpt_dir / "init.pt"))
        for p in sorted(ckpt_dir.glob("epoch-*.pt")):
            out.append((int(p.stem.split("-")[1]), p))
        m = self.metrics(run_id)
        if m and (ckpt_dir / "final.pt").exists():
            if not any(e == m["epochs"] for e, _ in out):
                out.append((m["epochs"], ckpt_dir / "final.pt"))
        return sorted(out)
