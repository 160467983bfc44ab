"""Experiment 5: accuracy and parameter count of all six output-map variants (the paper's appendix table).

Each variant trains on digits with the default profile's sizes (patch 4, depth 3, d = 32, 4 heads, n_train = 600)
to the CE target 0.01 or ``max_epochs`` (``zoo.train.train_model``, Jiang et al.'s rule, so ``epochs`` and
``reached_target`` say how hard each variant finds the data). Parameter counts are total and trainable
(``crate-fix`` freezes its output map, so it has CRATE's total but the tied variants' trainable count).

The paper-scale table (CIFAR 32x32, 4x4 patches, depth 12, 10 classes, d = 384 and 768) counts parameters of
models built on the meta device, so nothing is allocated or trained; paper-notes §4.2 gives 5.381M (crate) and
3.607M (tied) at d = 384.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from zoo.data import load_dataset
from zoo.models import VARIANTS, build_model, count_parameters
from zoo.train import TrainConfig, train_model

from .artifacts import pyplot, run_jobs, save_figure, write_csv

COLUMNS = ["variant", "seed", "test_acc", "train_acc", "test_loss", "train_loss", "epochs", "reached_target",
           "seconds", "status", "params_total", "params_trainable"]
PAPER_COLUMNS = ["variant", "dim", "depth", "heads", "image_size", "patch_size", "num_classes", "params_total",
                 "params_trainable"]
# paper-notes §4.2 (recounted there from the verified CRATE layer inventory): 32x32 input, 4x4 patches, depth 12,
# millions of parameters of (crate, the tied variants) per width
PAPER_NOTES_M = {384: (5.381, 3.607), 768: (21.379, 14.292)}


@dataclass(frozen=True)
class VariantsConfig:
    variants: tuple[str, ...] = VARIANTS
    seeds: int = 3
    n_train: int = 600
    split_seed: int = 0
    patch_size: int = 4
    depth: int = 3
    dim: int = 32
    heads: int = 4
    lr: float = 2e-3
    batch_size: int = 64
    weight_decay: float = 0.05
    warmup_epochs: int = 2
    max_epochs: int = 150
    target_ce: float = 0.01
    paper_dims: tuple[int, ...] = (384, 768)


QUICK = VariantsConfig(seeds=1, n_train=200, depth=2, dim=16, heads=2, max_epochs=3, warmup_epochs=1,
                       paper_dims=(384,))


def train_variant(variant: str, cfg: VariantsConfig, seed: int, data_dir: str | None) -> dict:
    data = load_dataset("digits", data_dir=data_dir, n_train=cfg.n_train, seed=cfg.split_seed)
    torch.manual_seed(seed)
    model = build_model(variant, image_size=data.image_size, patch_size=cfg.patch_size, channels=data.channels,
                        num_classes=data.num_classes, dim=cfg.dim, depth=cfg.depth, heads=cfg.heads)
    tcfg = TrainConfig(lr=cfg.lr, batch_size=cfg.batch_size, weight_decay=cfg.weight_decay,
                       max_epochs=cfg.max_epochs, warmup_epochs=cfg.warmup_epochs, target_ce=cfg.target_ce, seed=seed)
    metrics = train_model(model, data, tcfg)
    return {"variant": variant, "seed": seed, **{k: metrics[k] for k in COLUMNS if k in metrics},
            "params_total": count_parameters(model), "params_trainable": count_parameters(model, trainable_only=True)}


def paper_scale_counts(dims=(384, 768), depth: int = 12) -> pd.DataFrame:
    """Parameter counts at the paper's CIFAR scale, built on the meta device (no memory, no init cost)."""
    rows = []
    for dim in dims:
        heads = dim // 64   # CRATE-Tiny/Base's dim_head = 64; the count does not depend on K as long as K*p = d
        for variant in VARIANTS:
            with torch.device("meta"):
                model = build_model(variant, image_size=32, patch_size=4, channels=3, num_classes=10, dim=dim,
                                    depth=depth, heads=heads)
            rows.append({"variant": variant, "dim": dim, "depth": depth, "heads": heads, "image_size": 32,
                         "patch_size": 4, "num_classes": 10, "params_total": count_parameters(model),
                         "params_trainable": count_parameters(model, trainable_only=True)})
    return pd.DataFrame(rows, columns=PAPER_COLUMNS)


def plot_variants(table: pd.DataFrame, out: Path) -> list[Path]:
    plt = pyplot()
    stats = table.groupby("variant", sort=False).agg(
        test=("test_acc", "mean"), test_std=("test_acc", "std"), train=("train_acc", "mean"),
        train_std=("train_acc", "std"), total=("params_total", "first"), trainable=("params_trainable", "first"))
    x = np.arange(len(stats))
    fig, (ax_acc, ax_par) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_acc.bar(x - 0.2, stats["train"], 0.4, yerr=stats["train_std"].fillna(0), capsize=3, label="train")
    ax_acc.bar(x + 0.2, stats["test"], 0.4, yerr=stats["test_std"].fillna(0), capsize=3, label="test")
    ax_acc.set_xticks(x, stats.index, rotation=30, ha="right")
    ax_acc.set_ylabel("accuracy (mean ± std over seeds)")
    ax_acc.set_ylim(0, 1.05)
    ax_acc.legend(fontsize=8)
    ax_acc.set_title("digits, trained to CE 0.01 or max epochs", fontsize=10)
    ax_par.bar(x - 0.2, stats["total"], 0.4, label="total")
    ax_par.bar(x + 0.2, stats["trainable"], 0.4, label="trainable")
    ax_par.set_xticks(x, stats.index, rotation=30, ha="right")
    ax_par.set_ylabel("parameters")
    ax_par.legend(fontsize=8)
    ax_par.set_title("parameter count", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out, "variants")


def run(out: Path, *, zoo: Path | None = None, quick: bool = False, workers: int = 1, data_dir: str | None = None,
        log=print, config: VariantsConfig | None = None) -> dict:
    """Write variants.csv, variants_paper_scale.csv and variants.png/.pdf into ``out``; ``zoo`` is unused."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = config or (QUICK if quick else VariantsConfig())
    start = time.perf_counter()
    jobs = [(v, cfg, seed, data_dir) for seed in range(cfg.seeds) for v in cfg.variants]
    table = pd.DataFrame(run_jobs(train_variant, jobs, workers))
    order = {v: i for i, v in enumerate(cfg.variants)}
    table = table.sort_values(["variant", "seed"], key=lambda c: c.map(order) if c.name == "variant" else c)
    table = table.reset_index(drop=True)[COLUMNS]
    write_csv(table, out / "variants.csv")
    paper = paper_scale_counts(cfg.paper_dims)
    write_csv(paper, out / "variants_paper_scale.csv")
    plot_variants(table, out)

    per_variant = {}
    for variant, part in table.groupby("variant", sort=False):
        per_variant[variant] = {"test_acc": (float(part["test_acc"].mean()), float(part["test_acc"].std())),
                                "train_acc": float(part["train_acc"].mean()), "epochs": float(part["epochs"].mean()),
                                "reached_target": int(part["reached_target"].sum()), "runs": len(part),
                                "params_total": int(part["params_total"].iloc[0]),
                                "params_trainable": int(part["params_trainable"].iloc[0])}
    paper_m = {f"{v}@{d}": round(n / 1e6, 3) for v, d, n in zip(paper["variant"], paper["dim"], paper["params_total"])}
    matches = all(paper_m[f"crate@{d}"] == crate and all(paper_m[f"{v}@{d}"] == tied for v in ("crate-c", "crate-n",
                  "crate-t", "crate-identity")) for d, (crate, tied) in PAPER_NOTES_M.items() if d in cfg.paper_dims)
    log("variants (digits test acc, mean±std over %d seed(s); params): " % cfg.seeds + ", ".join(
        f"{v} {h['test_acc'][0]:.3f}±{h['test_acc'][1]:.3f} ({h['params_trainable']}/{h['params_total']})"
        for v, h in per_variant.items()))
    log("variants at paper scale (CIFAR 32x32, 4x4 patches, depth 12): " + ", ".join(
        f"{v} {m:.3f}M" for v, m in paper_m.items() if v.split("@")[0] in ("crate", "crate-c"))
        + f"; paper-notes §4.2 counts {'match' if matches else 'DO NOT match'}")
    return {"variants": per_variant, "paper_scale_m": paper_m, "paper_notes_match": bool(matches),
            "seconds": time.perf_counter() - start}
