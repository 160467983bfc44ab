"""Experiment 4: SRR as a regulariser (paper-notes §7): CE vs CE + beta * SRR-loss.

The loss is ``measures.srr.srr_loss`` (l1 in place of l0, per-entry mean |Z| times ``l1_weight``, plus
R^c(Z; U^l) - R(Z) at the ISTA outputs), applied at every layer (``all``), at one fixed layer (``fixed``, each layer
in turn), or at one layer drawn uniformly per step (``random``, the paper's efficient version).

Protocol, chosen so that accuracies are comparable and the test split decides nothing:
- digits with the default profile's model (patch 4, depth 3, d = 32, 4 heads) and n_train = 600, of which a
  stratified ``val_fraction`` is carved out as a validation split; every model trains on the rest;
- a fixed number of epochs (no CE-target stopping), trained by the one loop ``zoo.train.train_model`` with the
  SRR term as its ``extra_loss`` hook (AdamW + warmup/cosine);
- beta is chosen per variant from a small log grid by validation accuracy of the ``all`` mode with seed 0
  (``choose_beta``, which is handed the fit and validation tensors only), then fixed for every mode and seed;
- test accuracy is reported as mean +- std over seeds; ``seconds`` is the loop's time (training, with its cheap
  stopping-rule probe of 128 images per epoch and the final evaluation), and the overhead is relative to CE alone
  of the same variant under the same worker setting.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from measures.srr import srr_loss
from zoo.data import Dataset, load_dataset
from zoo.models import MAIN_VARIANTS, build_model, subspaces
from zoo.train import TrainConfig, evaluate, train_model

from .artifacts import pyplot, run_jobs, save_figure, write_csv

COLUMNS = ["variant", "mode", "layer", "beta", "seed", "test_acc", "val_acc", "seconds", "status"]
BETA_COLUMNS = ["variant", "beta", "val_acc", "chosen"]


@dataclass(frozen=True)
class RegularizeConfig:
    variants: tuple[str, ...] = MAIN_VARIANTS
    seeds: int = 3
    epochs: int = 60                 # fixed length, so CE and CE + SRR are compared at the same budget
    n_train: int = 600               # as benchmark/profiles/default.toml
    val_fraction: float = 0.2        # carved out of n_train for choosing beta
    split_seed: int = 0              # digits train/test split and the validation carve-out
    patch_size: int = 4
    depth: int = 3
    dim: int = 32
    heads: int = 4
    lr: float = 2e-3                 # the middle of default.toml's learning-rate axis
    batch_size: int = 64
    weight_decay: float = 0.05
    warmup_epochs: int = 2
    betas: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    eps_sq: float = 0.5              # the measure's default epsilon^2
    l1_weight: float = 1.0           # lambda of the per-entry l1 term in srr_loss


QUICK = RegularizeConfig(variants=("crate-c",), seeds=1, epochs=4, warmup_epochs=1, n_train=200, depth=2, dim=16, heads=2)


@dataclass(frozen=True)
class Mode:
    name: str               # ce | all | fixed | random
    layer: int | None = None  # 1-based, for ``fixed``

    @property
    def label(self) -> str:
        return {"ce": "CE", "all": "all layers", "random": "random layer"}.get(self.name, f"layer {self.layer}")


def modes_for(depth: int) -> list[Mode]:
    return [Mode("ce"), Mode("all"), *(Mode("fixed", layer) for layer in range(1, depth + 1)), Mode("random")]


def split_data(cfg: RegularizeConfig, data_dir: str | None = None):
    """(fit, val, test) as (x, y) pairs, normalised as ``load_dataset`` gives them: val is a stratified carve-out
    of digits' training subset."""
    from sklearn.model_selection import train_test_split
    data = load_dataset("digits", data_dir=data_dir, n_train=cfg.n_train, seed=cfg.split_seed)
    idx = np.arange(len(data.y_train))
    fit_idx, val_idx = train_test_split(idx, test_size=cfg.val_fraction, stratify=data.y_train.numpy(),
                                        random_state=cfg.split_seed)
    fit_idx, val_idx = torch.as_tensor(np.sort(fit_idx)), torch.as_tensor(np.sort(val_idx))
    fit = (data.x_train[fit_idx], data.y_train[fit_idx])
    val = (data.x_train[val_idx], data.y_train[val_idx])
    return fit, val, (data.x_test, data.y_test)


def srr_term(cfg: RegularizeConfig, mode: Mode, beta: float, model_cfg, seed: int):
    """The loop's ``extra_loss`` for ``mode``: beta * srr_loss per member, at the layers the mode picks (the random
    layer drawn per step from its own generator, apart from the batch order); None for CE alone."""
    if mode.name == "ce":
        return None
    pick = torch.Generator().manual_seed(seed + 7919)

    def extra_loss(params: dict, features: list, y: torch.Tensor) -> torch.Tensor:
        layers = {"all": None, "fixed": (mode.layer or 0) - 1,
                  "random": int(torch.randint(cfg.depth, (1,), generator=pick))}[mode.name]
        u = subspaces(model_cfg, params)
        return torch.stack([beta * srr_loss([f["Z_out"][e] for f in features], u[e], cfg.eps_sq,
                                            l1_weight=cfg.l1_weight, layers=layers) for e in range(len(u))])
    return extra_loss


def train_regularized(variant: str, cfg: RegularizeConfig, mode: Mode, beta: float, seed: int,
                      fit: tuple[torch.Tensor, torch.Tensor], evals: dict[str, tuple[torch.Tensor, torch.Tensor]]
                      ) -> dict:
    """Train one model on ``fit`` with CE (+ beta * srr_loss per ``mode``) for cfg.epochs; accuracy on ``evals``."""
    x, y = fit
    torch.manual_seed(seed)
    model = build_model(variant, image_size=x.shape[-1], patch_size=cfg.patch_size, channels=x.shape[1],
                        num_classes=int(y.max()) + 1, dim=cfg.dim, depth=cfg.depth, heads=cfg.heads)
    tcfg = TrainConfig(lr=cfg.lr, batch_size=cfg.batch_size, weight_decay=cfg.weight_decay, max_epochs=cfg.epochs,
                       warmup_epochs=cfg.warmup_epochs, target_ce=0.0, seed=seed)   # target 0: fixed length
    # the loop needs a test split to evaluate at its last epoch: the first of ``evals`` (its numbers are unused)
    data = fit_data(fit, next(iter(evals.values())), model.config.num_classes)
    start = time.perf_counter()
    metrics = train_model(model, data, tcfg, extra_loss=srr_term(cfg, mode, beta, model.config, seed))
    seconds = time.perf_counter() - start
    status = metrics["status"]
    accs = {f"{name}_acc": (evaluate(model, *xy)[1] if status == "done" else math.nan)
            for name, xy in evals.items()}
    return {"variant": variant, "mode": mode.name, "layer": mode.layer, "beta": beta if mode.name != "ce" else 0.0,
            "seed": seed, "seconds": seconds, "status": status, **accs}


def fit_data(fit: tuple[torch.Tensor, torch.Tensor], held_out: tuple[torch.Tensor, torch.Tensor], classes: int):
    """A ``Dataset`` of the fit split (already normalised) and a held-out split, for the training loop; its
    ``mean``/``std`` are the identity because the loop never reads them (the images are normalised already)."""
    x, y = fit
    return Dataset(name="digits-fit", x_train=x, y_train=y, x_test=held_out[0], y_test=held_out[1],
                   num_classes=classes, channels=x.shape[1], image_size=x.shape[-1], mean=(0.0,), std=(1.0,))


def choose_beta(variants, cfg: RegularizeConfig, fit, val, workers: int = 1) -> pd.DataFrame:
    """Per variant, the beta of ``cfg.betas`` with the best validation accuracy of the ``all`` mode, seed 0.

    Sees the fit and validation splits only. Ties go to the smaller beta. Returns one row per (variant, beta)
    with ``val_acc`` and ``chosen``.
    """
    jobs = [(v, cfg, Mode("all"), beta, 0, fit, {"val": val}) for v in variants for beta in cfg.betas]
    results = run_jobs(train_regularized, jobs, workers)
    table = pd.DataFrame([{"variant": r["variant"], "beta": r["beta"], "val_acc": r["val_acc"]} for r in results])
    table["chosen"] = False
    for variant, part in table.groupby("variant", sort=False):
        scores = part["val_acc"].fillna(-1.0)
        table.loc[scores.index[int(np.argmax(scores.to_numpy()))], "chosen"] = True
    return table[BETA_COLUMNS]


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (variant, mode, layer), part in table.groupby(["variant", "mode", "layer"], sort=False, dropna=False):
        rows.append({"variant": variant, "mode": mode, "layer": layer, "beta": part["beta"].iloc[0],
                     "n_seeds": len(part), "test_acc_mean": part["test_acc"].mean(),
                     "test_acc_std": part["test_acc"].std(), "val_acc_mean": part["val_acc"].mean(),
                     "seconds_mean": part["seconds"].mean()})
    summary = pd.DataFrame(rows)
    ce = summary[summary["mode"] == "ce"].set_index("variant")["seconds_mean"]
    summary["overhead_seconds"] = summary["seconds_mean"] - summary["variant"].map(ce)
    summary["overhead_ratio"] = summary["seconds_mean"] / summary["variant"].map(ce)
    summary["layer"] = summary["layer"].astype("Int64")
    return summary


def _label(mode: str, layer) -> str:
    return Mode(mode, None if pd.isna(layer) else int(layer)).label


def plot_summary(summary: pd.DataFrame, out: Path) -> list[Path]:
    plt = pyplot()
    variants = list(dict.fromkeys(summary["variant"]))
    fig, axes = plt.subplots(2, len(variants), figsize=(3.6 * len(variants), 5.6), squeeze=False)
    for col, variant in enumerate(variants):
        part = summary[summary["variant"] == variant].reset_index(drop=True)
        labels = [_label(m, l) for m, l in zip(part["mode"], part["layer"])]
        colors = ["grey" if m == "ce" else "tab:blue" for m in part["mode"]]
        x = np.arange(len(part))
        ax = axes[0, col]
        ax.bar(x, part["test_acc_mean"], yerr=part["test_acc_std"].fillna(0), color=colors, capsize=3)
        ce = part.loc[part["mode"] == "ce", "test_acc_mean"].iloc[0]
        ax.axhline(ce, color="grey", ls="--", lw=1, label="CE alone (mean)")
        low = np.nanmin(part["test_acc_mean"] - part["test_acc_std"].fillna(0))
        ax.set_ylim(max(0.0, low - 0.05), min(1.0, np.nanmax(part["test_acc_mean"] + part["test_acc_std"].fillna(0))
                                            + 0.02))
        beta = part.loc[part["mode"] != "ce", "beta"].iloc[0]
        ax.set_title(f"{variant} (beta = {beta:g})", fontsize=10)
        ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("test accuracy (mean ± std over seeds)" if col == 0 else "")
        ax.legend(fontsize=7, loc="lower right")
        ax = axes[1, col]
        ax.bar(x, part["seconds_mean"], color=colors)
        ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("training seconds (mean)" if col == 0 else "")
    fig.suptitle("CE vs CE + beta·SRR (beta chosen on validation, all layers, seed 0)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out, "regularize")


def headline(summary: pd.DataFrame) -> dict:
    result = {}
    for variant, part in summary.groupby("variant", sort=False):
        ce = part[part["mode"] == "ce"].iloc[0]
        reg = part[part["mode"] != "ce"]
        best = reg.loc[reg["test_acc_mean"].fillna(-1.0).idxmax()]   # NaN: every seed diverged
        every = reg[reg["mode"] == "all"].iloc[0]
        diff = best["test_acc_mean"] - ce["test_acc_mean"]
        stds = [s for s in (ce["test_acc_std"], best["test_acc_std"]) if np.isfinite(s)]
        noise = max(stds) if stds else math.nan   # one seed: no std, so never "exceeds"
        result[variant] = {
            "beta": float(every["beta"]),
            "ce": (float(ce["test_acc_mean"]), float(ce["test_acc_std"])),
            "all_layers": (float(every["test_acc_mean"]), float(every["test_acc_std"])),
            "best": _label(best["mode"], best["layer"]),
            "best_acc": (float(best["test_acc_mean"]), float(best["test_acc_std"])),
            "best_minus_ce": float(diff),
            "exceeds_seed_std": bool(np.isfinite(noise) and abs(diff) > noise),
            "overhead_ratio_all": float(every["overhead_ratio"]),
            "overhead_ratio_random": float(reg.loc[reg["mode"] == "random", "overhead_ratio"].iloc[0]),
        }
    return result


def run(out: Path, *, zoo: Path | None = None, quick: bool = False, workers: int = 1, data_dir: str | None = None,
        log=print, config: RegularizeConfig | None = None) -> dict:
    """Write regularize.csv, regularize_beta.csv, regularize_summary.csv and regularize.png/.pdf into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = config or (QUICK if quick else RegularizeConfig())
    start = time.perf_counter()
    fit, val, test = split_data(cfg, data_dir)
    betas = choose_beta(cfg.variants, cfg, fit, val, workers)
    write_csv(betas, out / "regularize_beta.csv")
    chosen = betas[betas["chosen"]].set_index("variant")["beta"].to_dict()

    # seeds outermost, so concurrent workers mix modes and no mode's timing sees systematically busier cores
    jobs = [(v, cfg, mode, chosen[v], seed, fit, {"val": val, "test": test})
            for seed in range(cfg.seeds) for v in cfg.variants for mode in modes_for(cfg.depth)]
    table = pd.DataFrame(run_jobs(train_regularized, jobs, workers))
    table["layer"] = table["layer"].astype("Int64")
    table = table.sort_values(["variant", "mode", "layer", "seed"], key=_mode_order).reset_index(drop=True)
    write_csv(table[COLUMNS], out / "regularize.csv")
    summary = summarize(table)
    write_csv(summary, out / "regularize_summary.csv")
    plot_summary(summary, out)

    result = headline(summary)
    helped = [v for v, h in result.items() if h["best_minus_ce"] > 0 and h["exceeds_seed_std"]]
    log("regularize (test acc, mean±std over %d seed(s)): " % cfg.seeds + "; ".join(
        f"{v} CE {h['ce'][0]:.3f}±{h['ce'][1]:.3f} vs {h['best']} {h['best_acc'][0]:.3f}±{h['best_acc'][1]:.3f} "
        f"(beta {h['beta']:g})" for v, h in result.items()))
    log(f"regularize: the best regularised mode beats CE by more than the seed std for {len(helped)}/{len(result)} "
        f"variants" + (f" ({', '.join(helped)})" if helped else " - SRR regularisation does not help here")
        + "; time overhead all layers x%.2f, random layer x%.2f (mean over variants)" % (
            np.mean([h["overhead_ratio_all"] for h in result.values()]),
            np.mean([h["overhead_ratio_random"] for h in result.values()])))
    return {"config": {k: v for k, v in cfg.__dict__.items()}, "chosen_beta": chosen, "variants": result,
            "helped": helped, "seconds": time.perf_counter() - start}


def _mode_order(column: pd.Series) -> pd.Series:
    if column.name == "mode":
        return column.map({"ce": 0, "all": 1, "fixed": 2, "random": 3})
    if column.name == "variant":
        order = {v: i for i, v in enumerate(MAIN_VARIANTS)}
        return column.map(lambda v: order.get(v, len(order)))
    return column
