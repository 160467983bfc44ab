"""Layer-wise SRR of every saved checkpoint (init, chosen epochs, final) of every finished run.

Writes ``layerwise.csv`` (run_id, variant, epoch, layer, srr, sparsity, rc, r); values are cached per run in
``runs/<id>/layerwise.json`` with the options they were computed under.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from zoo.store import RunStore, StoreError, atomic_write_text, read_json, write_json

from .compute import load_run, make_context
from .context import MeasureOptions
from .srr import srr_per_layer

COLUMNS = ["run_id", "variant", "epoch", "layer", "srr", "sparsity", "rc", "r"]


def run_layerwise(store: RunStore, run_id: str, options: MeasureOptions, data_dir: str | None = None) -> list[dict]:
    cache_path = store.run_dir(run_id) / "layerwise.json"
    if cache_path.exists():
        try:
            cached = read_json(cache_path)
            if cached.get("options") == options.as_dict():
                return cached["rows"]
        except StoreError:
            pass
    variant = store.load_config(run_id).model.variant
    rows = []
    for epoch, path in store.saved_epochs(run_id):
        model, init_state, data = load_run(store, run_id, data_dir, checkpoint=path)
        per_layer = srr_per_layer(make_context(model, init_state, data, options))
        for layer in range(len(per_layer["srr"])):
            rows.append({"run_id": run_id, "variant": variant, "epoch": epoch, "layer": layer + 1,
                         **{k: float(per_layer[k][layer]) for k in ("srr", "sparsity", "rc", "r")}})
    write_json(cache_path, {"options": options.as_dict(), "rows": rows})
    return rows


def layerwise_zoo(zoo_dir: str | Path, options: dict | None = None, data_dir: str | None = None,
                  progress: bool = True) -> pd.DataFrame:
    zoo_dir = Path(zoo_dir)
    store = RunStore(zoo_dir)
    opts = MeasureOptions.from_dict(options or {})
    models = pd.read_csv(zoo_dir / "models.csv")
    run_ids = models.loc[models["status"] == "done", "run_id"].tolist()
    from tqdm.auto import tqdm
    rows = []
    for run_id in tqdm(run_ids, desc="layerwise", unit="model", disable=not progress or not run_ids):
        rows.extend(run_layerwise(store, run_id, opts, data_dir))
    table = pd.DataFrame(rows, columns=COLUMNS)
    atomic_write_text(zoo_dir / "layerwise.csv", table.to_csv(index=False))
    return table
