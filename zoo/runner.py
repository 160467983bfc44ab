"""Build a zoo: train a list of run configurations, locally in parallel or on a Dask cluster, resumably.

Runs that differ only in lr, dropout and seed form ensemble groups that train as one stacked computation
(``zoo.train``); each run still gets its own checkpoints, state and metrics, equal bit for bit to training it
alone with the same code.

Rerunning the same command skips finished runs and continues unfinished ones from their last saved state. A run
that fails or diverges is recorded with its error and never stops the build. A finished run whose files are
corrupt (unreadable metrics, a final checkpoint that fails its checksum or the safe loader) is reported in one line
and retrained; a run directory whose config.json does not hash to its name is foreign: it is reported, set aside as
``runs/<id>.corrupt-<time>`` and the run is trained afresh. Nothing found corrupt is ever used.

A run's metrics include its CE and accuracy on the shifted test set (``zoo.shift``), evaluated from its final
weights when it finishes; a finished run recorded without them, or under another shift, gets them from its final
checkpoint the next time a build passes over it (reported in one line).
"""
from __future__ import annotations

import contextlib
import functools
import time
import traceback
from pathlib import Path

import pandas as pd
import torch

from .allocator import keep_freed_memory
from .data import load_dataset
from .config import DataConfig, RunConfig, ensemble_key
from .errors import BadValueError, MissingExtraError, MissingInputError, SchedulerError
from .models import CRATE
from .shift import shift_identity, shift_images
from .store import RunStore, StoreError, atomic_write_text, load_checkpoint, lock_lease, save_checkpoint
from .train import STATE_FORMAT, evaluate, resolve_device, train_ensemble

MODEL_COLUMNS = ["run_id", "variant", "lr", "batch_size", "dropout", "width", "depth", "n_train", "weight_decay",
                 "seed", "dataset",
                 "status", "reached_target", "epochs", "steps", "seconds", "train_loss", "test_loss",
                 "train_acc", "test_acc", "gap_loss", "gap_acc", "test_loss_shift", "test_acc_shift", "gap_shift",
                 "group_id", "error"]
# the gaps a zoo records: test CE − train CE, train acc − test acc, shifted test CE − train CE (zoo.shift)
GAPS = ("gap_loss", "gap_acc", "gap_shift")
SHIFT_COLUMNS = ("test_loss_shift", "test_acc_shift", "gap_shift")


@functools.lru_cache(maxsize=4)
def cached_dataset(data: DataConfig, data_dir: str | None):
    return load_dataset(data.dataset, data_dir=data_dir, n_train=data.n_train, n_test=data.n_test,
                        num_classes=data.num_classes, seed=data.split_seed)


@functools.lru_cache(maxsize=4)
def cached_shifted_test(data: DataConfig, data_dir: str | None) -> torch.Tensor:
    """The test images of ``data`` under ``zoo.shift.SHIFT``, seeded by its split seed (labels: the test set's)."""
    ds = cached_dataset(data, data_dir)
    return shift_images(ds.x_test, ds.mean, ds.std, data.split_seed)


def shifted_test_metrics(cfg: RunConfig, final: dict | None, metrics: dict, data_dir: str | None,
                         device: str | None = "cpu") -> dict:
    """``shift`` (its identity), ``test_loss_shift``, ``test_acc_shift`` and ``gap_shift`` (= test_loss_shift −
    train_loss) of a run from its final weights, evaluated like the test set (eval mode, float64 CE, on ``device``);
    NaN for a run that is not ``done`` (diverged or failed), as its other metrics are."""
    nan = float("nan")
    out = {"shift": shift_identity(), "test_loss_shift": nan, "test_acc_shift": nan, "gap_shift": nan}
    if metrics["status"] != "done":
        return out
    with torch.random.fork_rng(devices=[]):  # building a model draws its init: leave the caller's RNG stream alone
        model = CRATE(cfg.model)
    model.load_state_dict(final)
    where = resolve_device(device)
    loss, acc = evaluate(model.to(where), cached_shifted_test(cfg.data, data_dir).to(where),
                         cached_dataset(cfg.data, data_dir).y_test.to(where), cfg.train.eval_batch_size)
    return {**out, "test_loss_shift": loss, "test_acc_shift": acc, "gap_shift": loss - metrics["train_loss"]}


def record_missing_shift(store: RunStore, runs: list[RunConfig], data_dir: str | None) -> dict[str, int]:
    """Add the shifted-test metrics to finished runs whose metrics.json lacks them or holds another shift's (runs
    finished before the shift existed, or before it changed); returns how many, by the identity they had.

    Cheap: one evaluation of the final checkpoint (read safely) on the shifted test set, no training."""
    current, recorded = shift_identity(), {}
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)   # the sums of a worker evaluating a fresh run, so the same bits
    try:
        for cfg in runs:
            metrics = store.metrics(cfg.run_id)
            if metrics is None or (metrics.get("shift") == current and all(c in metrics for c in SHIFT_COLUMNS)):
                continue
            final = load_checkpoint(store.ckpt(cfg.run_id, "final")) if metrics["status"] == "done" else None
            fresh = {k: v for k, v in metrics.items() if k != "run_id"}
            store.write_metrics(cfg.run_id, {**fresh, **shifted_test_metrics(cfg, final, metrics, data_dir)})
            before = metrics.get("shift") or "none"
            recorded[before] = recorded.get(before, 0) + 1
    finally:
        torch.set_num_threads(threads)
    return recorded


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
# Runs of one ensemble group train together, at most this many at a time (`--ensemble-size`); a member's result
# does not depend on the others, so this only trades memory for speed.
ENSEMBLE_SIZE = 8


def train_run(cfg: RunConfig, root: str | Path, data_dir: str | None = None, threads: int | None = TRAIN_THREADS,
              device: str | None = "cpu", log=print) -> dict:
    """Train one run of the store at ``root`` (or return its stored metrics if it is finished)."""
    return train_group([cfg], root, data_dir, threads, device, log)[0]


def train_group(cfgs: list[RunConfig], root: str | Path, data_dir: str | None = None,
                threads: int | None = TRAIN_THREADS, device: str | None = "cpu", log=print) -> list[dict]:
    """Train runs of one ensemble group (``zoo.config.ensemble_key``) together as one stacked computation.

    A run locked by another process is left to it and a finished run returns its stored metrics; the rest train
    as one ensemble, each saving its epochs, state and results as it goes, exactly as a run trained alone would.
    """
    if threads:
        torch.set_num_threads(threads)
    keep_freed_memory()
    store = RunStore(root)
    results: dict[str, dict] = {}
    with contextlib.ExitStack() as held:
        todo, locks = [], {}
        for cfg in cfgs:
            run_id = store.prepare(cfg)
            lock = locks[run_id] = held.enter_context(store.lock(run_id))
            if not lock.acquire():
                results[run_id] = {"run_id": run_id, "status": "locked"}
            elif store.is_finished(run_id):
                results[run_id] = {**store.metrics(run_id), "skipped": True}
            else:
                todo.append(cfg)
        if todo:
            results.update(_train_members(todo, store, data_dir, log, device))
        for cfg in todo:
            if not locks[cfg.run_id].renew():   # paused past its lease, so another process took the run over
                store.record_event(cfg.run_id, "lock lost: its lease expired and another process took the run over")
    return [results[cfg.run_id] for cfg in cfgs]


def _train_members(cfgs: list[RunConfig], store: RunStore, data_dir: str | None, log, device: str | None) -> dict:
    results: dict[str, dict] = {}

    def finish(cfg: RunConfig, metrics: dict) -> None:
        run_id = cfg.run_id
        metrics = {**cfg.axes, "group_id": cfg.group_id, **metrics}
        store.write_metrics(run_id, metrics)
        # the resumable state goes only once metrics.json is written: a kill in between resumes at the last epoch
        state_path = store.ckpt(run_id, "state")
        for suffix in (".sha256", ""):
            state_path.with_name(state_path.name + suffix).unlink(missing_ok=True)
        store.record_event(run_id, f"finish {metrics['status']}")
        results[run_id] = {"run_id": run_id, **metrics, "trained": True}

    try:
        data = cached_dataset(cfgs[0].data, data_dir)
        models = [init_model(cfg) for cfg in cfgs]
        resume = [_prepare_member(cfg, model, store, log) for cfg, model in zip(cfgs, models)]
        for cfg, state in zip(cfgs, resume):
            where = f"resume epoch {state['epoch']}" if state else "start epoch 0"
            store.record_event(cfg.run_id, f"{where} (ensemble of {len(cfgs)})")

        def on_epoch(member: int, epoch: int, get_state, record: dict) -> None:
            run_id = cfgs[member].run_id
            state = get_state()
            if epoch in set(cfgs[member].train.checkpoint_epochs):
                save_checkpoint(store.ckpt(run_id, f"epoch-{epoch:04d}"), state["model"])
            store.write_log(run_id, state["history"])
            save_checkpoint(store.ckpt(run_id, "state"), state)

        def on_finish(member: int, metrics: dict, final: dict) -> None:
            cfg = cfgs[member]
            if metrics["status"] == "done":
                save_checkpoint(store.ckpt(cfg.run_id, "final"), final)
            metrics.update(shifted_test_metrics(cfg, final, metrics, data_dir, device))
            metrics["error"] = (f"non-finite loss or weights in epoch {metrics['diverged_epoch']}"
                                if metrics["status"] == "diverged" else "")
            finish(cfg, metrics)

        train_ensemble(models, [c.run_id for c in cfgs], [c.train for c in cfgs], data, resume=resume,
                       on_epoch=on_epoch, on_finish=on_finish, device=device)
    except Exception as err:
        unfinished = [cfg for cfg in cfgs if cfg.run_id not in results]
        if len(cfgs) > 1:   # retry one by one from the saved states, so that one bad run fails only itself
            log(f"ensemble of {len(cfgs)} runs failed ({err.__class__.__name__}: {err}); "
                f"retrying its {len(unfinished)} unfinished run(s) one at a time")
            for cfg in unfinished:
                results.update(_train_members([cfg], store, data_dir, log, device))
        else:
            for cfg in unfinished:
                finish(cfg, {"status": "failed", "error": f"{err.__class__.__name__}: {err}",
                             "traceback": traceback.format_exc(limit=5)})
    return results


def _prepare_member(cfg: RunConfig, model: CRATE, store: RunStore, log) -> dict | None:
    """Write the run's init checkpoint if needed; return its resumable state, or None to start afresh."""
    run_id = cfg.run_id
    init_path = store.ckpt(run_id, "init")
    try:  # the init weights are a function of the seed: a missing or corrupt copy is simply written again
        load_checkpoint(init_path)
    except StoreError:
        save_checkpoint(init_path, model.state_dict())
    state_path = store.ckpt(run_id, "state")
    if not state_path.exists():
        return None
    try:
        state = load_checkpoint(state_path)
    except StoreError as err:
        log(f"[{run_id}] {err}; restarting this run from its initialisation")
        return None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        log(f"[{run_id}] {state_path}: a training state of another format (an older version of this tool); "
            f"restarting this run from its initialisation")
        return None
    return state


# ---------------------------------------------------------------------------------------------------------

def build_zoo(runs: list[RunConfig], out: str | Path, *, name: str = "zoo", workers: int = 1,
              scheduler: str | None = None, data_dir: str | None = None, progress: bool = True,
              device: str | None = "cpu", ensemble_size: int = ENSEMBLE_SIZE, files: dict | None = None,
              log=print) -> dict:
    """Train every run of ``runs`` into ``out`` (``name`` labels the log lines); return a summary (counts by status,
    wall time). models.csv lists ``runs`` in their order; ``files`` (name -> text, e.g. the profile that made the
    runs) are stored beside them once the settings are checked.

    ``device`` (cpu, cuda, auto) is where each run trains; it is not part of the runs' configs. Runs that differ
    only in lr, dropout and seed train together, up to ``ensemble_size`` at a time (1: one run at a time); the
    models are the same bit for bit whatever the grouping."""
    resolve_device(device)  # an unusable device or lock lease is an error before anything is written
    lock_lease()
    if not isinstance(ensemble_size, int) or ensemble_size < 1:
        raise BadValueError(f"ensemble size must be a positive integer, got {ensemble_size!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for file_name, text in (files or {}).items():
        atomic_write_text(out / file_name, text)
    store = RunStore(out)
    todo = [cfg for cfg in runs if not _admit(store, cfg, log)]
    training = {cfg.run_id for cfg in todo}
    recorded = record_missing_shift(store, [cfg for cfg in runs if cfg.run_id not in training], data_dir)
    groups = plan_groups(todo, ensemble_size, 1 if scheduler else workers)
    log(f"zoo {name}: {len(runs)} runs, {len(runs) - len(todo)} already finished, {len(todo)} to train "
        f"in {len(groups)} ensemble(s) ({'dask ' + scheduler if scheduler else f'{workers} worker(s)'})")
    if recorded:
        log(f"zoo {name}: shifted test set ({shift_identity()}) evaluated from the final checkpoints of "
            f"{sum(recorded.values())} finished run(s) recorded without it ("
            + ", ".join(f"{n} {'with none' if old == 'none' else f'with {old!r}'}" for old, n in recorded.items())
            + ")")
    start = time.perf_counter()
    results = list(_execute(groups, out, workers=workers, scheduler=scheduler, data_dir=data_dir,
                            progress=progress, device=device, log=log))
    table = write_models_csv(out, runs)
    counts = table["status"].value_counts().to_dict() if len(table) else {}
    summary = {"runs": len(runs), "trained": sum(bool(r.get("trained")) for r in results),
               "skipped": len(runs) - len(todo),
               "done": counts.get("done", 0), "diverged": counts.get("diverged", 0),
               "failed": counts.get("failed", 0), "locked": sum(r.get("status") == "locked" for r in results),
               "reached_target": int(table["reached_target"].fillna(False).astype(bool).sum()) if len(table) else 0,
               "seconds": time.perf_counter() - start}
    log(f"zoo {name}: {summary['done']} done ({summary['reached_target']} reached the CE target), "
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


def plan_groups(runs: list[RunConfig], max_size: int, workers: int = 1) -> list[list[RunConfig]]:
    """Runs with one ``ensemble_key`` in chunks of at most ``max_size``, in grid order; groups are split further
    (evenly) while there are fewer groups than workers, so that no worker idles."""
    by_key: dict[str, list[RunConfig]] = {}
    for cfg in runs:
        by_key.setdefault(ensemble_key(cfg), []).append(cfg)
    sizes = {key: max_size for key in by_key}
    while True:
        groups = [members[i:i + sizes[key]] for key, members in by_key.items()
                  for i in range(0, len(members), sizes[key])]
        splittable = [key for key in by_key if sizes[key] > 1]
        if len(groups) >= workers or not splittable:
            return groups
        biggest = max(splittable, key=lambda k: sizes[k])
        sizes[biggest] = -(-min(sizes[biggest], len(by_key[biggest])) // 2)


# seconds to reach a Dask scheduler before --scheduler is reported as unreachable (dask's own default connect timeout)
SCHEDULER_TIMEOUT = 30


def connect_scheduler(address: str, timeout: float):
    """A ``dask.distributed.Client`` connected to ``address``, or a ``UsageError`` naming the address: dask not
    installed (``MissingExtraError``), a malformed address, nothing answering within ``timeout`` seconds, or
    something answering that is not a Dask scheduler (``SchedulerError``)."""
    try:
        from dask.distributed import Client  # an optional dependency: imported only when --scheduler is given
    except ImportError as err:
        raise MissingExtraError(f"--scheduler {address} needs dask.distributed, which is not installed ({err}); "
                                f'install the extra: pip install -e ".[dask]"') from None
    try:
        return Client(address, timeout=timeout)
    except ValueError as err:
        raise SchedulerError(f"--scheduler {address}: not a Dask scheduler address ({err}); give tcp://host:port") \
            from err
    except OSError as err:  # refused, unknown host, timed out: dask reports each as an OSError after `timeout`
        raise SchedulerError(f"--scheduler {address}: no Dask scheduler answered within {timeout:g} s ({err}); check "
                             f"that a scheduler runs there (`dask scheduler`), the host and port, and that this "
                             f"machine can reach it") from err
    except MemoryError as err:  # another service answered and dask read its reply as a frame length (HTTP)
        raise SchedulerError(f"--scheduler {address}: something answered that is not a Dask scheduler "
                             f"({err.__class__.__name__}: {err}); check the port (a Dask scheduler listens on 8786 "
                             f"unless told otherwise)") from err


def _execute(groups: list[list[RunConfig]], out: Path, *, workers: int, scheduler: str | None,
             data_dir: str | None, progress: bool, device: str | None, log=print):
    from tqdm.auto import tqdm
    # connect before training anything, and before the bar exists, so a bad address ends in one line
    client = connect_scheduler(scheduler, SCHEDULER_TIMEOUT) if scheduler else None
    bar = tqdm(total=sum(map(len, groups)), desc="zoo", unit="run", disable=not progress or not groups)
    if client is not None:
        from dask.distributed import as_completed
        with client:
            futures = client.map(train_group, groups, root=str(out), data_dir=data_dir, device=device, pure=False)
            for future in as_completed(futures):
                results = future.result()
                bar.update(len(results))
                yield from results
    elif workers > 1:
        from joblib import Parallel, delayed
        jobs = (delayed(train_group)(group, str(out), data_dir, device=device) for group in groups)
        for results in Parallel(n_jobs=workers, return_as="generator_unordered")(jobs):
            bar.update(len(results))
            yield from results
    else:
        for group in groups:
            results = train_group(group, out, data_dir, device=device, log=log)
            bar.update(len(results))
            yield from results
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
        raise MissingInputError(f"{csv_path} not found: build the zoo first (srrbench zoo --out {path})")
    return pd.read_csv(csv_path)
