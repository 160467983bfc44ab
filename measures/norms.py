"""Norm measures (Jiang et al. eqs. 40 and 42, the RGM extras ℓ2 and ℓ2-dist; measure-formulas §8.2).

The weight matrices W_i are those of ``context.weight_matrices`` (every 2-D parameter: qkv = U^T, learned or frozen
output maps, ISTA dictionaries, patch embedding, head; in other models also each convolution's (out, in·k) filter
matrix); w is all of them flattened and w⁰ the same at init.
Arithmetic is in float64.
"""
from __future__ import annotations

import math

import torch

from .context import MeasureContext
from .registry import register_measure

__all__ = ["frobenius_sq", "frobenius_dist_sq"]


def frobenius_sq(ctx: MeasureContext, path: bool = False) -> dict[str, float]:
    """‖W_i‖²_F per weight matrix (``path=True``: per matrix of ``ctx.path_weights()``), float64, cached."""
    weights = ctx.path_weights() if path else ctx.weights()
    return ctx.cached(f"norms.fro_sq(path={path and ctx.options.shared_weights})", lambda: {
        name: float(w.to(torch.float64).square().sum()) for name, w in weights.items()})


def frobenius_dist_sq(ctx: MeasureContext, path: bool = False) -> dict[str, float]:
    """‖W_i − W_i⁰‖²_F per weight matrix (``path=True``: per matrix of ``ctx.path_weights()``), float64, cached."""
    def compute() -> dict[str, float]:
        weights, init = (ctx.path_weights(), ctx.init_path_weights()) if path else (ctx.weights(),
                                                                                   ctx.init_weights())
        return {name: float((w.to(torch.float64) - init[name].to(torch.float64)).square().sum())
                for name, w in weights.items()}
    return ctx.cached(f"norms.fro_dist_sq(path={path and ctx.options.shared_weights})", compute)


@register_measure("num-params", family="norm")
def num_params(ctx: MeasureContext) -> float:
    """ω: number of trainable parameters (requires_grad; crate-fix's frozen output maps are not counted)."""
    # Jiang's #params counts what training can move; a frozen map is part of the architecture, not of ω.
    return float(sum(p.numel() for p in ctx.model.parameters() if p.requires_grad))


@register_measure("l2", family="norm")
def l2(ctx: MeasureContext) -> float:
    """‖w‖₂ over all weight matrices (biases, LayerNorm gains, cls and position embedding excluded)."""
    return math.sqrt(sum(frobenius_sq(ctx).values()))


@register_measure("l2-dist-init", family="norm", needs_init=True)
def l2_dist_init(ctx: MeasureContext) -> float:
    """‖w − w⁰‖₂ over all weight matrices, the distance from initialisation."""
    return math.sqrt(sum(frobenius_dist_sq(ctx).values()))


@register_measure("param-norm", family="norm")
def param_norm(ctx: MeasureContext) -> float:
    """Σ_i ‖W_i‖²_F (Jiang eq. 42)."""
    return sum(frobenius_sq(ctx).values())


@register_measure("fro-dist", family="norm", needs_init=True)
def fro_dist(ctx: MeasureContext) -> float:
    """Σ_i ‖W_i − W_i⁰‖²_F (Jiang eq. 40)."""
    return sum(frobenius_dist_sq(ctx).values())
