"""Experiment 2: layer-wise SRR_l = ||Z||_0 + R^c(Z; U^l) - R(Z) per variant across training (paper-notes §4.2, §8).

The paper's claim [S]: the curve generally decreases over the first layers and rises in the deeper ones. From a
built zoo, ``measures.layerwise.layerwise_zoo`` gives one curve per saved checkpoint of every finished run (it
caches per run, so after ``srrbench run`` nothing is recomputed); here they are averaged over each variant's runs.

Runs stop at different epochs (CE-target rule), so checkpoints are labelled ``init``, ``epoch N`` (the profile's
checkpoint epochs, averaged over the runs that lasted that long) and ``final`` (each run's last epoch; the
``epoch`` column then holds the runs' mean final epoch). ``n_runs`` says how many runs each mean stands on.
All finished runs enter, whether or not they reached the CE target: the curves are descriptive.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from measures.layerwise import layerwise_zoo
from zoo.errors import BadValueError

from .artifacts import experiment_zoo, measure_options_of, pyplot, save_figure, torch_threads, write_csv

COLUMNS = ["variant", "checkpoint", "epoch", "layer", "srr", "sparsity", "rc", "r", "n_runs"]
VALUES = ["srr", "sparsity", "rc", "r"]


def label_checkpoints(raw: pd.DataFrame) -> pd.DataFrame:
    """Add ``checkpoint``: init (epoch 0), final (each run's last saved epoch), else ``epoch N``."""
    raw = raw.copy()
    last = raw.groupby("run_id")["epoch"].transform("max")
    raw["checkpoint"] = np.where(raw["epoch"] == 0, "init",
                                 np.where(raw["epoch"] == last, "final", "epoch " + raw["epoch"].astype(str)))
    return raw


def variant_curves(raw: pd.DataFrame) -> pd.DataFrame:
    """Mean over each variant's runs of srr, sparsity, rc, r per (checkpoint, layer)."""
    raw = label_checkpoints(raw)
    grouped = raw.groupby(["variant", "checkpoint", "layer"], sort=False)
    table = grouped[["epoch", *VALUES]].mean().reset_index()
    table["n_runs"] = grouped["run_id"].nunique().to_numpy()
    order = {"init": -1.0, "final": np.inf}
    table["_order"] = [order.get(c, e) for c, e in zip(table["checkpoint"], table["epoch"])]
    table = table.sort_values(["variant", "_order", "layer"]).drop(columns="_order").reset_index(drop=True)
    return table[COLUMNS]


def curve_shape(srr: np.ndarray) -> str:
    """``valley`` (decreases then rises: an interior minimum), ``decreasing``, ``increasing`` or ``other``."""
    diffs = np.diff(srr)
    if len(srr) < 2:
        return "other"
    if np.all(diffs < 0):
        return "decreasing"
    if np.all(diffs > 0):
        return "increasing"
    low = int(np.argmin(srr))
    if 0 < low < len(srr) - 1:
        return "valley"
    return "other"


def plot_curves(table: pd.DataFrame, out: Path) -> list[Path]:
    plt = pyplot()
    variants = list(dict.fromkeys(table["variant"]))
    fig, axes = plt.subplots(1, len(variants), figsize=(3.4 * len(variants), 3.3), squeeze=False, sharey=False)
    for ax, variant in zip(axes[0], variants):
        part = table[table["variant"] == variant]
        checkpoints = list(dict.fromkeys(part["checkpoint"]))
        colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(checkpoints)))
        for color, checkpoint in zip(colors, checkpoints):
            c = part[part["checkpoint"] == checkpoint]
            label = checkpoint if checkpoint != "final" else f"final (epoch {c['epoch'].iloc[0]:.0f})"
            ax.plot(c["layer"], c["srr"], marker="o", ms=3, color=color, label=label)
        ax.set_title(variant)
        ax.set_xlabel(r"layer $\ell$")
        ax.set_xticks(sorted(part["layer"].unique()))
    axes[0, 0].set_ylabel(r"SRR$_\ell = \|Z\|_0 + R^c(Z;U^\ell) - R(Z)$")
    axes[0, -1].legend(fontsize=7, title="checkpoint", title_fontsize=7)
    fig.suptitle("Layer-wise SRR per variant across training (mean over runs)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out, "layerwise")


def run(out: Path, *, zoo: Path | None = None, quick: bool = False, workers: int = 1, data_dir: str | None = None,
        log=print) -> dict:
    """Write layerwise.csv and layerwise.png/.pdf into ``out``; return the per-variant headline."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    zoo = experiment_zoo(out, zoo, quick, "layerwise", data_dir, workers, log)
    with torch_threads(1):
        raw = layerwise_zoo(zoo, options=measure_options_of(zoo), data_dir=data_dir, progress=False)
    if raw.empty:
        raise BadValueError(f"{zoo}: no finished runs with checkpoints, so there is no layer-wise SRR to plot")
    table = variant_curves(raw)
    write_csv(table, out / "layerwise.csv")
    plot_curves(table, out)

    headline = {}
    for variant, part in table[table["checkpoint"] == "final"].groupby("variant", sort=False):
        srr = part.sort_values("layer")["srr"].to_numpy()
        headline[variant] = {"min_layer": int(part.sort_values("layer")["layer"].iloc[int(np.argmin(srr))]),
                             "shape": curve_shape(srr), "final_epoch": float(part["epoch"].iloc[0]),
                             "n_runs": int(part["n_runs"].iloc[0])}
    depth = int(table["layer"].max())
    valleys = [v for v, h in headline.items() if h["shape"] == "valley"]
    log("layerwise (final checkpoint, depth %d): " % depth
        + ", ".join(f"{v} min at layer {h['min_layer']} ({h['shape']})" for v, h in headline.items()))
    log(f"layerwise: 'decreases in early layers, rises later' holds for {len(valleys)}/{len(headline)} variants"
        + (f" ({', '.join(valleys)})" if valleys else ""))
    return {"zoo": str(zoo), "variants": headline, "valley_variants": valleys, "depth": depth,
            "seconds": time.perf_counter() - start}
