"""Layer-wise SRR of every saved checkpoint (init, chosen epochs, final) of every finished run.

Writes ``layerwise.csv`` (run_id, variant, epoch, layer, srr, sparsity, rc, r); values are cached per run in
``runs/<id>/layerwise.json`` with the options, the final checkpoint's sha256 and the fingerprint of the code
(this module, ``measures.srr`` and what they use) they were computed under. A run
whose checkpoints cannot be loaded safely, or whose layer-wise SRR fails, is reported in one line and left out;
the other runs carry on.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from zoo.store import RunStore, atomic_write_text, write_json

from .compute import checkpoint_digest, load_run, make_context, read_cache
from .context import MeasureOptions
from .registry import modules_fingerprint
from .srr import srr_per_layer

COLUMNS = ["run_id", "variant", "epoch", "layer", "srr", "sparsity", "rc", "r"]


def run_layerwise(store: RunStore, run_id: str, options: MeasureOptions, data_dir: str | None = None,
                  notes: list[str] | None = None) -> list[dict]:
    cache_path = store.run_dir(run_id) / "layerwise.json"
    variant = store.load_config(run_id).model.variant  # raises for a foreign config before any cache is served
    key = {"options": options.as_dict(), "checkpoint": checkpoint_digest(store, run_id),
           "code": modules_fingerprint(__name__, "measures.srr", "measures.context")}
    cached = read_cache(cache_path, key, notes if notes is not None else [])
    if cached is not None and isinstance(cached.get("rows"), list):
        return cached["rows"]
    rows = []
    for epoch, path in store.saved_epochs(run_id):
        model, init_state, data = load_run(store, run_id, data_dir, checkpoint=path)
        per_layer = srr_per_layer(make_context(model, init_state, data, options))
        for layer in range(len(per_layer["srr"])):
            rows.append({"run_id": run_id, "variant": variant, "epoch": epoch, "layer": layer + 1,
                         **{k: float(per_layer[k][layer]) for k in ("srr", "sparsity", "rc", "r")}})
    write_json(cache_path, {**key, "rows": rows})
    return rows


def layerwise_zoo(zoo_dir: str | Path, options: dict | None = None, data_dir: str | None = None,
                  progress: bool = True, log=print) -> pd.DataFrame:
    zoo_dir = Path(zoo_dir)
    store = RunStore(zoo_dir)
    opts = MeasureOptions.from_dict(options or {})
    models = pd.read_csv(zoo_dir / "models.csv")
    run_ids = models.loc[models["status"] == "done", "run_id"].tolist()
    from tqdm.auto import tqdm
    rows = []
    for run_id in tqdm(run_ids, desc="layerwise", unit="model", disable=not progress or not run_ids):
        notes: list[str] = []
        try:
            rows.extend(run_layerwise(store, run_id, opts, data_dir, notes))
        except Exception as err:  # one run's corrupt checkpoint or failing SRR must not stop the others
            first_line = next(iter(str(err).splitlines()), "")
            notes.append(f"run {run_id} left out ({err.__class__.__name__}: {first_line})")
        for note in notes:
            log(f"layerwise: {note}")
    table = pd.DataFrame(rows, columns=COLUMNS)
    atomic_write_text(zoo_dir / "layerwise.csv", table.to_csv(index=False))
    return table
