"""Experiment 1, no training: does a stack of MSSA blocks with a skip, Z <- Z + MSSA(Z), ascend R^c?

paper-notes §1: the practical update keeps only the +U·SSA part of the Neumann-series gradient, which is a descent
step on the second-order Taylor term T2 = -(gamma^2/4) sum_k ||A_k||_F^2 alone (A_k = (U_k^T Z)^T (U_k^T Z)); it
grows sum_k ||A_k||_F^2 and so pushes R^c *up* for crate-c, while crate-n's sign flip pushes it down.

The toy runs the suite's own MSSA module (``layer.attn`` of a CRATE model, its qkv weight overwritten by U^T with
U a random orthogonal d x d matrix from a QR, so the K heads are orthonormal p-dimensional subspaces with K*p = d)
on Gaussian tokens. One module, hence one U, is applied at every layer, so R^c(Z^l; U) is measured against the
codebook the stack uses. ``crate`` keeps its output map at its random init. Settings:

- the theory's update, Z + MSSA(Z) (no LayerNorm), at token scales sigma = 1, 0.1 and 10: sigma against the
  1/sqrt(p) temperature decides whether attention is near-uniform (small sigma) or near-one-hot (large sigma);
- as in CRATELayer, Z + MSSA(LN(Z)), at sigma = 1 and 0.1.

Besides R^c it records ``rc_unit``, R^c of the unit-normalised tokens: a scale-free control that tells whether a
rise in R^c is token-norm growth or a spreading of directions.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from measures.srr import coding_rate_subspaces
from zoo.models import MAIN_VARIANTS, build_model

from .artifacts import pyplot, save_figure, torch_threads, write_csv

COLUMNS = ["setting", "scale", "layernorm", "variant", "seed", "layer", "rc", "rc_unit"]


@dataclass(frozen=True)
class AscentSetting:
    name: str
    scale: float = 1.0        # std of the Gaussian tokens
    layernorm: bool = False   # MSSA sees LN(Z), as inside CRATELayer; R^c is always measured on Z itself


SETTINGS = (
    AscentSetting("no LN, sigma=1", 1.0),           # the primary setting: the theory's Z + MSSA(Z)
    AscentSetting("no LN, sigma=0.1", 0.1),
    AscentSetting("no LN, sigma=10", 10.0),
    AscentSetting("LN, sigma=1", 1.0, layernorm=True),
    AscentSetting("LN, sigma=0.1", 0.1, layernorm=True),
)


@dataclass(frozen=True)
class AscentConfig:
    dim: int = 64          # d
    heads: int = 4         # K; p = d / K
    tokens: int = 64       # N
    depth: int = 12        # stacked MSSA + skip blocks
    seeds: int = 10        # random draws of U, Z and crate's output map
    eps_sq: float = 0.5    # the suite's default epsilon^2
    temperature: float | None = None   # None: CRATE's 1/sqrt(p)


QUICK = AscentConfig(dim=16, heads=2, tokens=8, depth=4, seeds=3)


def attention_block(variant: str, cfg: AscentConfig, seed: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(MSSA module, its LayerNorm) of a one-layer CRATE of ``variant`` with W_qkv = U^T, U random orthogonal."""
    torch.manual_seed(seed)  # crate's output map keeps this random init
    model = build_model(variant, image_size=4, patch_size=4, channels=1, num_classes=2, dim=cfg.dim, depth=1,
                        heads=cfg.heads, temperature=cfg.temperature).eval()
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(cfg.dim, cfg.dim, generator=g))   # (d, K*p), orthonormal columns
    layer = model.layers[0]
    with torch.no_grad():
        layer.attn.qkv.weight.copy_(u.T)                                  # (K*p, d) = U^T
    return layer.attn, layer.attn_norm


def subspaces_of(attn: torch.nn.Module, heads: int) -> torch.Tensor:
    """U as (K, d, p) from an MSSA module's qkv weight, the layout of ``CRATE.subspaces()``."""
    w = attn.qkv.weight.detach()                                          # (K*p, d)
    return w.reshape(heads, w.shape[0] // heads, w.shape[1]).transpose(1, 2)


def tokens(cfg: AscentConfig, seed: int, scale: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(10_000 + seed)
    return scale * torch.randn(1, cfg.tokens, cfg.dim, generator=g)      # (1, N, d)


@torch.no_grad()
def rc_curve(variant: str, setting: AscentSetting, cfg: AscentConfig, seed: int) -> list[dict]:
    """R^c(Z^l; U) and R^c of the unit-normalised tokens for l = 0 (input) .. depth."""
    attn, norm = attention_block(variant, cfg, seed)
    u = subspaces_of(attn, cfg.heads)
    z = tokens(cfg, seed, setting.scale)
    rows = []
    for layer in range(cfg.depth + 1):
        if layer:
            z = z + attn(norm(z) if setting.layernorm else z)
        rows.append({"setting": setting.name, "scale": setting.scale, "layernorm": setting.layernorm,
                     "variant": variant, "seed": seed, "layer": layer,
                     "rc": coding_rate_subspaces(z, u, cfg.eps_sq).item(),
                     "rc_unit": coding_rate_subspaces(F.normalize(z, dim=-1), u, cfg.eps_sq).item()})
    return rows


def second_order_objective(z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """sum_k ||A_k||_F^2 with A_k = (Z U_k)(Z U_k)^T, the N x N Gram of head k; T2 = -(gamma^2/4) times it."""
    proj = torch.einsum("bnd,kdp->bknp", z.to(torch.float64), u.to(torch.float64))   # (B, K, N, p)
    gram = proj @ proj.transpose(-1, -2)                                              # (B, K, N, N)
    return (gram ** 2).sum(dim=(-3, -2, -1))


@torch.no_grad()
def taylor_step_change(variant: str, cfg: AscentConfig, seed: int, step: float = 1e-3,
                       scale: float = 1.0) -> float:
    """Relative change of sum_k ||A_k||^2 after the small step Z + step * MSSA(Z) (positive: the step grows it,
    i.e. descends T2 and, to second order, ascends R^c)."""
    attn, _ = attention_block(variant, cfg, seed)
    u = subspaces_of(attn, cfg.heads)
    z = tokens(cfg, seed, scale)
    before = second_order_objective(z, u)
    after = second_order_objective(z + step * attn(z), u)
    return ((after - before) / before).item()


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Per setting and variant: R^c (mean over seeds) at the first and last layer, the change, the least-squares
    slope per layer, how many seeds rose, and the same change for rc_unit."""
    rows = []
    for (setting, variant), part in table.groupby(["setting", "variant"], sort=False):
        mean = part.groupby("layer")[["rc", "rc_unit"]].mean()
        per_seed = part.pivot(index="seed", columns="layer", values="rc")
        first, last = per_seed.columns.min(), per_seed.columns.max()
        rows.append({"setting": setting, "variant": variant, "rc_first": mean["rc"].iloc[0],
                     "rc_last": mean["rc"].iloc[-1], "rc_change": mean["rc"].iloc[-1] - mean["rc"].iloc[0],
                     "rc_slope": float(np.polyfit(mean.index.to_numpy(float), mean["rc"].to_numpy(), 1)[0]),
                     "seeds_rising": int((per_seed[last] > per_seed[first]).sum()), "seeds": len(per_seed),
                     "rc_unit_change": mean["rc_unit"].iloc[-1] - mean["rc_unit"].iloc[0]})
    return pd.DataFrame(rows)


def plot_curves(table: pd.DataFrame, out: Path) -> list[Path]:
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator
    settings = list(dict.fromkeys(table["setting"]))
    variants = list(dict.fromkeys(table["variant"]))
    colors = dict(zip(variants, plt.get_cmap("tab10").colors))
    fig, axes = plt.subplots(2, len(settings), figsize=(3.2 * len(settings), 5.6), squeeze=False)
    for col, setting in enumerate(settings):
        part = table[table["setting"] == setting]
        for row, (column, label) in enumerate([("rc", r"$R^c(Z^\ell; U)$"),
                                                ("rc_unit", r"$R^c$ of unit-norm tokens")]):
            ax = axes[row, col]
            for variant in variants:
                stats = part[part["variant"] == variant].groupby("layer")[column].agg(["mean", "std"])
                x = stats.index.to_numpy()
                ax.plot(x, stats["mean"], marker="o", ms=3, color=colors[variant], label=variant)
                ax.fill_between(x, stats["mean"] - stats["std"].fillna(0), stats["mean"] + stats["std"].fillna(0),
                                color=colors[variant], alpha=0.2)
            if row == 0:
                ax.set_title(setting, fontsize=9)
                if part["rc"].min() > 0 and part["rc"].max() / part["rc"].min() > 50:
                    ax.set_yscale("log")
            ax.set_xlabel(r"layer $\ell$")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if col == 0:
                ax.set_ylabel(label)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(r"Attention-only stack $Z \leftarrow Z + \mathrm{MSSA}(Z)$: mean $\pm$ std over seeds", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out, "ascent")


def plot_taylor(out: Path) -> list[Path]:
    """The paper's Taylor plot: log(1+x), its second-order polynomial x - x^2/2, and the term -x^2/2 alone."""
    plt = pyplot()
    x = np.linspace(0.0, 2.0, 201)
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    ax.plot(x, np.log1p(x), label=r"$\log(1+x)$")
    ax.plot(x, x - x ** 2 / 2, "--", label=r"$x - x^2/2$ (2nd-order Taylor)")
    ax.plot(x, -x ** 2 / 2, ":", label=r"$-x^2/2$ (2nd-order term alone)")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("x")
    ax.set_ylabel("value")
    ax.set_title("Minimising $-x^2/2$ alone pushes x up", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out, "taylor")


def run(out: Path, *, zoo: Path | None = None, quick: bool = False, workers: int = 1, data_dir: str | None = None,
        log=print, config: AscentConfig | None = None, settings=SETTINGS) -> dict:
    """Write ascent.csv, ascent_summary.csv, ascent.png/.pdf and taylor.png/.pdf into ``out``; return the headline.

    ``zoo``, ``workers`` and ``data_dir`` are accepted for the common experiment signature and unused (no
    training, no data).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = config or (QUICK if quick else AscentConfig())
    start = time.perf_counter()
    with torch_threads(1):   # many tiny matrices: threads only add overhead
        rows = [row for setting in settings for variant in MAIN_VARIANTS for seed in range(cfg.seeds)
                for row in rc_curve(variant, setting, cfg, seed)]
    table = pd.DataFrame(rows, columns=COLUMNS)
    write_csv(table, out / "ascent.csv")
    summary = summarize(table)
    write_csv(summary, out / "ascent_summary.csv")
    plot_curves(table, out)
    plot_taylor(out)

    by = {(r.setting, r.variant): r for r in summary.itertuples()}
    holds = {s.name: bool(by[(s.name, "crate-c")].rc_change > 0 and by[(s.name, "crate-n")].rc_change < 0)
             for s in settings}
    taylor = {v: float(np.mean([taylor_step_change(v, cfg, seed) > 0 for seed in range(cfg.seeds)]))
              for v in ("crate-c", "crate-n")}
    primary = settings[0].name
    result = {
        "config": {**cfg.__dict__, "temperature": cfg.temperature or 1 / math.sqrt(cfg.dim // cfg.heads)},
        "rc_change": {f"{s}|{v}": float(by[(s, v)].rc_change) for s, v in by},
        "rc_slope": {f"{s}|{v}": float(by[(s, v)].rc_slope) for s, v in by},
        "rc_unit_change": {f"{s}|{v}": float(by[(s, v)].rc_unit_change) for s, v in by},
        "expectation_holds": holds,
        "taylor_step_grows_energy": taylor,   # fraction of seeds where a small step grows sum_k ||A_k||^2
        "seconds": time.perf_counter() - start,
    }
    changes = ", ".join(f"{v} {by[(primary, v)].rc_first:.1f}->{by[(primary, v)].rc_last:.1f}"
                        for v in MAIN_VARIANTS)
    failed = [s for s, ok in holds.items() if not ok]
    log(f"ascent [{primary}] R^c layer 0->{cfg.depth}: {changes}")
    log(f"ascent: 'R^c rises for crate-c, falls for crate-n' holds in {len(holds) - len(failed)}/{len(holds)} "
        f"settings" + (f"; does NOT hold in: {', '.join(failed)}" if failed else "")
        + f"; small step grows sum||A_k||^2 for crate-c in {taylor['crate-c']:.0%} of seeds, crate-n in "
          f"{taylor['crate-n']:.0%}")
    return result
