"""Compute registered measures on one stored run or every finished run of a zoo (any other model:
``measures.model_api``).

Per run, values are cached in ``runs/<id>/measures.json`` together with the options, the sha256 of the final
checkpoint they were computed from and each measure's code fingerprint (``registry.code_fingerprint``: its module
and the helper modules it uses), so a rerun computes only what is missing, new, or whose code changed, and never
serves values of other weights (a retrained or replaced checkpoint), other options or other code. The dataset is
loaded only when a measure to compute has ``needs_data=True``; the training log (``runs/<id>/log.csv``) is passed
to every measure as ``ctx.training_log``. A cache
that is unreadable or does not match is reported in one line and recomputed. A measure that fails on a model (or
gives a non-finite value) gives NaN and its error goes to ``measures_errors.log``; a run whose checkpoint cannot be
loaded safely gives NaN for every measure, one line in the log, and no cache; the other measures and models carry on.
"""
from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from zoo.allocator import keep_freed_memory
from zoo.data import Dataset
from zoo.models import CRATE
from zoo.runner import cached_dataset
from zoo.store import RunStore, StoreError, atomic_write_text, load_checkpoint, read_json, write_json

from .context import MeasureContext, MeasureOptions
from .registry import Measure, available, code_fingerprint, get_measure, resolve_names


def draw_sample(x: torch.Tensor, y: torch.Tensor, options: MeasureOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed sample of ``options.n_samples`` rows of (x, y) drawn with ``options.seed`` (all if fewer), in
    their original order."""
    if options.n_samples >= len(x):
        return x, y
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(options.seed))[:options.n_samples]
    return x[idx.sort().values], y[idx.sort().values]


def sample_split(data: Dataset, options: MeasureOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed sample of ``options.n_samples`` images of the chosen split (all of it if smaller)."""
    x, y = (data.x_train, data.y_train) if options.split == "train" else (data.x_test, data.y_test)
    return draw_sample(x, y, options)


def make_context(model: nn.Module, init_state: dict | None, data: Dataset | None, options: MeasureOptions,
                 training_log: list[dict] | None = None) -> MeasureContext:
    """The context of one model; ``data=None`` gives a data-free context for ``needs_data=False`` measures."""
    x, y = sample_split(data, options) if data is not None else (None, None)
    return MeasureContext(model=model, init_state=init_state, x=x, y=y,
                          n_train=len(data.x_train) if data is not None else None, options=options,
                          training_log=training_log)


def evaluate_measures(ctx: MeasureContext, names: list[str]) -> dict[str, dict]:
    """{name: {"value", "error", "seconds"}} for each name; exceptions and non-scalars become NaN plus the error."""
    out = {}
    for name in names:
        measure = get_measure(name)
        start = time.perf_counter()
        try:
            value = measure(ctx)
            if np.ndim(value) != 0:
                raise TypeError(f"returned an array of shape {np.shape(value)}; a measure returns one float "
                                f"(per-layer curves belong to measures.layerwise)")
            value, error = float(value), None
            if not math.isfinite(value):  # an overflow is a NaN with its reason
                value, error = float("nan"), f"non-finite value {value}"
        except Exception as err:  # one failing measure must not stop the rest
            value, error = float("nan"), f"{err.__class__.__name__}: {err}"
        out[name] = {"value": value, "error": error, "seconds": time.perf_counter() - start}
    return out


def load_model(store: RunStore, run_id: str, checkpoint: str | Path = "final"):
    """(model with the checkpoint's weights, initial state_dict) of a stored run, loaded safely."""
    cfg = store.load_config(run_id)
    model = CRATE(cfg.model)
    init_state = load_checkpoint(store.ckpt(run_id, "init"))
    path = checkpoint if isinstance(checkpoint, Path) else store.ckpt(run_id, checkpoint)
    model.load_state_dict(load_checkpoint(path))
    return model, init_state


def load_run(store: RunStore, run_id: str, data_dir: str | None = None, checkpoint: str | Path = "final"):
    """(model with the checkpoint's weights, initial state_dict, dataset) of a stored run."""
    model, init_state = load_model(store, run_id, checkpoint)
    return model, init_state, cached_dataset(store.load_config(run_id).data, data_dir)


def _needs_data(names: list[str]) -> bool:
    return any(get_measure(n).needs_data for n in names)


def _run_context(store: RunStore, run_id: str, names: list[str], options: MeasureOptions,
                 data_dir: str | None) -> MeasureContext:
    """The context of a stored run's final model for ``names``: its training log, and its dataset only when one
    of them has ``needs_data=True`` (weight-only measures never touch the dataset, nor need its files)."""
    model, init_state = load_model(store, run_id)
    data = cached_dataset(store.load_config(run_id).data, data_dir) if _needs_data(names) else None
    return make_context(model, init_state, data, options, store.read_log(run_id))


def compute_run(run_dir: str | Path, names=None, *, data_dir: str | None = None, **options) -> pd.DataFrame:
    """Measures of the final model of one stored run directory (``<zoo>/runs/<run_id>``), as a one-row table with
    its ``run_id``; not cached (``compute_zoo`` caches)."""
    opts = MeasureOptions.from_dict(options)
    names = resolve_names(names)
    run_dir = Path(run_dir)
    ctx = _run_context(RunStore(run_dir.parent.parent), run_dir.name, names, opts, data_dir)
    results = evaluate_measures(ctx, names)
    return pd.DataFrame([{"run_id": run_dir.name, **{name: r["value"] for name, r in results.items()}}])


# ---------------------------------------------------------------------------------------------------------

def checkpoint_digest(store: RunStore, run_id: str, checkpoint: str = "final") -> str | None:
    """sha256 of the checkpoint file's bytes as they are now (None if it is missing): the key of the caches."""
    try:
        return hashlib.sha256(store.ckpt(run_id, checkpoint).read_bytes()).hexdigest()
    except OSError:
        return None


def read_cache(cache_path: Path, key: dict, notes: list[str]) -> dict | None:
    """The cache at ``cache_path`` if its entries match ``key``; else None, with the reason appended to notes."""
    if not cache_path.exists():
        return None
    try:
        cached = read_json(cache_path)
    except StoreError as err:
        notes.append(f"{err}; recomputing")
        return None
    if not isinstance(cached, dict):
        notes.append(f"{cache_path}: not a cache of this suite; recomputing")
        return None
    for field_name, value in key.items():
        if cached.get(field_name) != value:
            what = {"options": "other measure options",
                    "checkpoint": "other weights than the run's ckpt/final.pt",
                    "code": "other code of the SRR modules"}.get(field_name, field_name)
            notes.append(f"{cache_path}: computed with {what}; recomputing")
            return None
    return cached


def _run_measures(zoo_dir: str, run_id: str, fingerprints: dict[str, str], options: dict, data_dir: str | None,
                  threads: int | None) -> dict:
    """Compute the missing measures of one run and update its cache; returns the full cache entry and notes
    (one line per cache discarded or run that could not be loaded). ``fingerprints``: {name: code fingerprint}
    of the measures to serve, computed once by the caller."""
    if threads:
        torch.set_num_threads(threads)
    keep_freed_memory()
    store = RunStore(zoo_dir)
    cache_path = store.run_dir(run_id) / "measures.json"
    notes: list[str] = []

    def untrusted(err: StoreError) -> dict:  # corrupt or foreign run: reported, NaN, nothing cached, never used
        notes.append(f"{err}; run {run_id} gets NaN for every measure (retrain it: srrbench zoo)")
        failed = {n: {"value": float("nan"), "error": f"StoreError: {err}", "seconds": float("nan"),
                      "code": code} for n, code in fingerprints.items()}
        return {"run_id": run_id, "computed": 0, "values": failed, "notes": notes}

    try:
        store.check_config(run_id)  # a config edited after training makes the run foreign, its cache too
    except StoreError as err:
        return untrusted(err)
    key = {"options": options, "checkpoint": checkpoint_digest(store, run_id)}
    cache = read_cache(cache_path, key, notes)
    if cache is None or not isinstance(cache.get("values"), dict):
        cache = {**key, "values": {}}
    todo = [n for n, code in fingerprints.items()
            if not isinstance(cache["values"].get(n), dict) or cache["values"][n].get("code") != code]
    if todo:
        try:
            ctx = _run_context(store, run_id, todo, MeasureOptions.from_dict(options), data_dir)
        except StoreError as err:
            return untrusted(err)
        for name, result in evaluate_measures(ctx, todo).items():
            cache["values"][name] = {**result, "code": fingerprints[name]}
        write_json(cache_path, cache)
    return {"run_id": run_id, "computed": len(todo), "values": cache["values"], "notes": notes}


def with_existing_columns(zoo_dir: Path, names: list[str], log=print) -> list[str]:
    """The measures the zoo's measures.csv already holds, in its order, then those of ``names`` it lacks, so that
    computing one more measure adds a column and keeps the others (served from the runs' caches where their code and
    options are unchanged, computed again where not). A column whose measure is no longer registered is dropped,
    and an unreadable measures.csv ignored, each with a line saying so."""
    path = zoo_dir / "measures.csv"
    if not path.exists():
        return names
    try:
        previous = [c for c in pd.read_csv(path, nrows=0).columns if c != "run_id"]
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as err:
        log(f"measures: {path} is unreadable ({err}); it is written afresh with {len(names)} measure(s)")
        return names
    registered = [m.name for m in available()]
    gone = [c for c in previous if c not in registered]
    if gone:
        log(f"measures: {len(gone)} column(s) of {path} belong to no registered measure and are dropped: "
            f"{', '.join(gone)}")
    kept = [c for c in previous if c in registered]
    return [*kept, *(n for n in names if n not in kept)]


def compute_zoo(zoo_dir: str | Path, names=None, *, options: dict | None = None, workers: int = 1,
                data_dir: str | None = None, progress: bool = True, keep_existing: bool = False,
                log=print) -> pd.DataFrame:
    """Measures ``names`` of every finished run of a zoo (with ``keep_existing``, also those its measures.csv
    already holds: ``with_existing_columns``); writes measures.csv, measures_info.csv, measures_options.json and
    measures_errors.log in ``zoo_dir``; returns the measures table."""
    zoo_dir = Path(zoo_dir)
    names = resolve_names(names)
    if keep_existing:
        names = with_existing_columns(zoo_dir, names, log)
    fingerprints = {n: code_fingerprint(get_measure(n)) for n in names}
    options = MeasureOptions.from_dict(options or {}).as_dict()
    models = pd.read_csv(zoo_dir / "models.csv")
    run_ids = models.loc[models["status"] == "done", "run_id"].tolist()
    log(f"measures: {len(names)} measures on {len(run_ids)} finished runs "
        f"({len(models) - len(run_ids)} runs not 'done' are left out)")
    from tqdm.auto import tqdm
    start = time.perf_counter()
    bar = tqdm(total=len(run_ids), desc="measures", unit="model", disable=not progress or not run_ids)
    if workers > 1:
        from joblib import Parallel, delayed
        import os
        threads = max(1, (os.cpu_count() or 1) // workers)
        jobs = (delayed(_run_measures)(str(zoo_dir), r, fingerprints, options, data_dir, threads) for r in run_ids)
        results = []
        for result in Parallel(n_jobs=workers, return_as="generator_unordered")(jobs):
            results.append(result)
            bar.update(1)
    else:
        results = []
        for r in run_ids:
            results.append(_run_measures(str(zoo_dir), r, fingerprints, options, data_dir, None))
            bar.update(1)
    bar.close()
    by_run = {r["run_id"]: r for r in results}
    for r in results:
        for note in r.get("notes", ()):
            log(f"measures: {note}")
    rows, errors, seconds = [], [], {n: [] for n in names}
    for run_id in run_ids:
        values = by_run[run_id]["values"]
        row = {"run_id": run_id}
        for n in names:
            v = values[n]
            row[n] = v["value"]
            seconds[n].append(v.get("seconds", float("nan")))
            if v.get("error"):
                errors.append(f"{run_id}\t{n}\t{v['error']}")
        rows.append(row)
    table = pd.DataFrame(rows, columns=["run_id", *names])
    atomic_write_text(zoo_dir / "measures.csv", table.to_csv(index=False))
    info = pd.DataFrame([{"measure": n, "family": get_measure(n).family,
                          "higher_is_complex": get_measure(n).higher_is_complex,
                          "description": get_measure(n).description, "version": get_measure(n).version,
                          "code": fingerprints[n][:12],
                          "mean_seconds": float(np.nanmean(seconds[n])) if seconds[n] else float("nan")}
                         for n in names])
    atomic_write_text(zoo_dir / "measures_info.csv", info.to_csv(index=False))
    write_json(zoo_dir / "measures_options.json", options)
    atomic_write_text(zoo_dir / "measures_errors.log", "\n".join(errors) + ("\n" if errors else ""))
    computed = sum(r["computed"] for r in results)
    log(f"measures: {computed} values computed, {len(run_ids) * len(names) - computed} from cache, "
        f"{len(errors)} failed (see measures_errors.log); {time.perf_counter() - start:.1f} s "
        f"-> {zoo_dir / 'measures.csv'}")
    return table


def describe() -> pd.DataFrame:
    """The registered measures: name, family, what each needs (data, crate, init, log), direction, description."""
    def needs(m: Measure) -> str:
        flags = {"data": m.needs_data, "crate": m.needs_crate, "init": m.needs_init, "log": m.needs_training_log}
        return ",".join(k for k, v in flags.items() if v) or "-"
    return pd.DataFrame([{"measure": m.name, "family": m.family, "needs": needs(m),
                          "higher_is_complex": m.higher_is_complex, "description": m.description}
                         for m in available()])
