"""Build a zoo: train every run of a profile's grid, locally in parallel or on a Dask cluster, resumably.

Rerunning the same command skips finished runs and continues unfinished ones from their last saved state. A run
that fails or diverges is recorded with its error and never stops the build. A finished run whose files are
corrupt (unreadable metrics, a final checkpoint that fails its checksum or the safe loader) is reported in one line
and retrained; a run directory whose config.json does not hash to its name is foreign: it is reported, set aside as
``runs/<id>.corrupt-<time>`` and the run is trained afresh. Nothing found corrupt is ever used.
"""
from __future__ import annotations

import functools
import time
import traceback
from pathlib import Path

import pandas as pd
import torch

from .data import load_dataset
from .grid import DataConfig, Profile, RunConfig
from .models import CRATE
from .store import RunStore, StoreError, atomic_write_text, load_checkpoint, save_checkpoint
from .train import resolve_device, train_model

MODEL_COLUMNS = ["run_id", "variant", "lr", "batch_size", "dropout", "width", "depth", "seed", "dataset",
                 "status", "reached_target", "epochs", "steps", "seconds", "train_loss", "test_loss",
                 "train_acc", "test_acc", "gap_loss", "gap_acc", "group_id", "error"]
FINISHED = ("done", "diverged")


@functools.lru_cache(maxsize=4)
def cached_dataset(data: DataConfig, data_dir: str | None):
    return load_dataset(data.dataset, data_dir=data_dir, n_train=data.n_train, n_test=data.n_test,
                        num_classes=data.num_classes, seed=data.split_seed)


def dataset_shape(data: DataConfig, data_dir: str | None) -> tuple[int, int, int]:
    ds = cached_dataset(data, data_dir)
    return ds.image_size, ds.channels, ds.num_classes


def init_model(cfg: RunConfig) -> CRATE:
    """The run's model at initialisation: a function of its seed alone."""
    torch.manual_seed(cfg.train.seed)
    return CRATE(cfg.model)


# Every run trains on one torch thread: the result then does not depend on --workers, Dask or a resume with
# other settings (thread count changes float summation order), and for these small models one thread per
# process is also the fastest use of the cores (workers default to the core count).
TRAIN_THREADS = 1


def train_run(cfg: RunConfig, root: str | Path, data_dir: str | None = None, threads: int | None = TRAIN_THREADS,
              device: str | None = "cpu", log=print) -> dict:
    """Train one run of the store at ``root`` (or return its stored metrics if it is finished)."""
    if threads:
        torch.set_num_threads(threads)
    store = RunStore(root)
    run_id = store.prepare(cfg)
    with store.lock(run_id) as lock:
        if not lock.acquire():
            return {"run_id": run_id, "status": "locked"}
        if store.is_finished(run_id):
            return {**store.metrics(run_id), "skipped": True}
        try:
            metrics = _train(cfg, store, run_id, data_dir, log, device)
        except Exception as err:
            metrics = {"status": "failed", "error": f"{err.__class__.__name__}: {err}",
                       "traceback": traceback.format_exc(limit=5)}
        metrics = {**cfg.axes, "group_id": cfg.group_id, **metrics}
        store.write_metrics(run_id, metrics)
        # the resumable state goes only once metrics.json is written: a kill in between resumes at the last epoch
        state_path = store.ckpt(run_id, "state")
        for suffix in (".sha256", ""):
            state_path.with_name(state_path.name + suffix).unlink(missing_ok=True)
        store.record_event(run_id, f"finish {metrics['status']}")
        return {"run_id": run_id, **metrics, "trained": True}


def _train(cfg: RunConfig, store: RunStore, run_id: str, data_dir: str | None, log, device: str | None) -> dict:
    data = cached_dataset(cfg.data, data_dir)
    model = init_model(cfg)
    init_path = store.ckpt(run_id, "init")
    try:  # the init weights are a function of the seed: a missing or corrupt copy is simply written again
        load_checkpoint(init_path)
    except StoreError:
        save_checkpoint(init_path, model.state_dict())
    resume = None
    state_path = store.ckpt(run_id, "state")
    if state_path.exists():
        try:
            resume = load_checkpoint(state_path)
        except StoreError as err:
            log(f"[{run_id}] {err}; restarting this run from its initialisation")
    store.record_event(run_id, f"resume epoch {resume['epoch']}" if resume else "start epoch 0")
    keep = set(cfg.train.checkpoint_epochs)

    def on_epoch(epoch: int, get_state, record: dict) -> None:
        state = get_state()
        if epoch in keep:
            save_checkpoint(store.ckpt(run_id, f"epoch-{epoch:04d}"), state["model"])
        store.write_log(run_id, state["history"])
        save_checkpoint(state_path, state)

    metrics = train_model(model, data, cfg.train, resume=resume, on_epoch=on_epoch, device=device)
    if metrics["status"] == "done":
        save_checkpoint(store.ckpt(run_id, "final"), model.state_dict())
    metrics["error"] = (f"non-finite loss or weights in epoch {metrics['diverged_epoch']}"
                        if metrics["status"] == "diverged" else "")
    return metrics


# ---------------------------------------------------------------------------------------------------------

def build_zoo(profile: Profile, out: str | Path, *, workers: int = 1, scheduler: str | None = None,
              data_dir: str | None = None, progress: bool = True, device: str | None = "cpu", log=print) -> dict:
    """Train every run of ``profile`` into ``out``; return a summary (counts by status, wall time).
    ``device`` (cpu, cuda, auto) is where each run trains; it is not part of the runs' configs."""
    resolve_device(device)  # an unusable device is an error before anything is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "profile.toml", profile.source or "")
    runs = profile.runs(*dataset_shape(profile.data, data_dir))
    store = RunStore(out)
    todo = [cfg for cfg in runs if not _admit(store, cfg, log)]
    log(f"zoo {profile.name}: {len(runs)} runs, {len(runs) - len(todo)} already finished, {len(todo)} to train "
        f"({'dask ' + scheduler if scheduler else f'{workers} worker(s)'})")
    start = time.perf_counter()
    results = list(_execute(todo, out, workers=workers, scheduler=scheduler, data_dir=data_dir,
                            progress=progress, device=device))
    table = write_models_csv(out, runs)
    counts = table["status"].value_counts().to_dict() if len(table) else {}
    summary = {"runs": len(runs), "trained": sum(bool(r.get("trained")) for r in results),
               "skipped": len(runs) - len(todo),
               "done": counts.get("done", 0), "diverged": counts.get("diverged", 0),
               "failed": counts.get("failed", 0), "locked": sum(r.get("status") == "locked" for r in results),
               "reached_target": int(table["reached_target"].fillna(False).astype(bool).sum()) if len(table) else 0,
               "seconds": time.perf_counter() - start}
    log(f"zoo {profile.name}: {summary['done']} done ({summary['reached_target']} reached the CE target), "
        f"{summary['diverged']} diverged, {summary['failed']} failed, {summary['skipped']} skipped, "
        f"{summary['locked']} locked by another process; {summary['seconds']:.1f} s -> {out / 'models.csv'}")
    for r in results:
        if r.get("status") == "failed":
            log(f"  failed {r['run_id']}: {r.get('error')}")
    return summary


def _admit(store: RunStore, cfg: RunConfig, log) -> bool:
    """Prepare the run's directory for ``build_zoo``; True when the run is finished and intact (skip it).

    Everything found corrupt is reported in one line naming the file, and never used: a config.json that does not
    hash to its directory (a foreign or edited run) sets the directory aside and the run starts afresh; unreadable
    metrics or a final checkpoint failing its checksum or the safe loader make a finished run train again.
    """
    run_id = cfg.run_id
    try:
        store.prepare(cfg)
    except StoreError as err:
        aside = store.set_aside(run_id)
        log(f"{err}; set aside as {aside.name if aside else '(moved by another process)'}, retraining run {run_id}")
        store.prepare(cfg)
        return False
    if store.is_finished(run_id):
        return True
    metrics_path = store.run_dir(run_id) / "metrics.json"
    metrics = store.metrics(run_id)
    if metrics_path.exists() and metrics is None:
        log(f"{metrics_path}: unreadable or not this run's metrics; retraining run {run_id}")
    elif metrics is not None and metrics["status"] == "done":
        try:
            load_checkpoint(store.ckpt(run_id, "final"))
        except StoreError as err:
            log(f"{err}; retraining run {run_id}")
    return False


def _execute(todo: list[RunConfig], out: Path, *, workers: int, scheduler: str | None, data_dir: str | None,
             progress: bool, device: str | None):
    from tqdm.auto import tqdm
    bar = tqdm(total=len(todo), desc="zoo", unit="run", disable=not progress or not todo)
    if scheduler:
        from dask.distributed import Client, as_completed
        with Client(scheduler) as client:
            futures = client.map(train_run, todo, root=str(out), data_dir=data_dir, device=device, pure=False)
            for future in as_completed(futures):
                bar.update(1)
                yield future.result()
    elif workers > 1:
        from joblib import Parallel, delayed
        jobs = (delayed(train_run)(cfg, str(out), data_dir, device=device) for cfg in todo)
        for result in Parallel(n_jobs=workers, return_as="generator_unordered")(jobs):
            bar.update(1)
            yield result
    else:
        for cfg in todo:
            yield train_run(cfg, out, data_dir, device=device)
            bar.update(1)
    bar.close()


def write_models_csv(out: Path, runs: list[RunConfig]) -> pd.DataFrame:
    store = RunStore(out)
    rows = []
    for cfg in runs:
        m = store.metrics(cfg.run_id) or {"status": "pending"}
        rows.append({**{c: None for c in MODEL_COLUMNS}, **cfg.axes, "run_id": cfg.run_id,
                     "group_id": cfg.group_id, **{k: v for k, v in m.items() if k in MODEL_COLUMNS}})
    table = pd.DataFrame(rows, columns=MODEL_COLUMNS)
    atomic_write_text(out / "models.csv", table.to_csv(index=False))
    return table


def load_zoo(path: str | Path) -> pd.DataFrame:
    """The zoo's models.csv as a DataFrame, one row per run."""
    csv_path = Path(path) / "models.csv"
    if not csv_path.exists():
        raise FileNotFoundError(f"{csv_path} not found: build the zoo first (srrbench zoo --out {path})")
    return pd.read_csv(csv_path)
