"""Spectral and Frobenius measures (Jiang et al. eqs. 29–39; measure-formulas §8.3), in the port's log form.

W_1..W_{d_L} are the matrices of ``context.path_weight_matrices``: every 2-D parameter, with a matrix applied twice on
a path (W_qkv of the tied variants crate-c/-n/-t, also their output map) listed twice under the default option
``shared_weights="per-use"``, so every variant with an output map has d_L = 3L + 2 (``"once"``: 2L + 2 for the tied
ones). Every measure of this module, sums included, runs over that list. "log" is the natural logarithm; γ is the signed
10th-percentile margin of ``measures.margin``. All CRATE maps are ``Linear``, so ‖W‖₂ is the exact largest singular
value (``torch.linalg.matrix_norm(W, 2)``), in float64; for a convolution of another model it is that of its
(out, in·k) filter matrix, as in Jiang et al.'s code, not the operator norm of the convolution. Products are sums of
logs so that d_L = 50 matrices with ‖W‖ ~ 10 do not overflow.

The /margin forms, spec-init-main and spec-orig-main need log γ: when γ ≤ 0 they raise ``MeasureUndefined`` (the
compute layer records NaN and the reason). log-spec-init-main also needs log Σ_i ‖W_i − W_i⁰‖²_F/‖W_i‖²₂, which is
undefined for a model that never left its initialisation; it raises ``MeasureUndefined`` then as well.
"""
from __future__ import annotations

import math

import torch

from .context import MeasureContext
from .margin import MeasureUndefined, log_margin_sq
from .norms import frobenius_dist_sq, frobenius_sq
from .registry import register_measure

__all__ = ["spectral_sq"]


def spectral_sq(ctx: MeasureContext) -> dict[str, float]:
    """‖W_i‖²₂ per path matrix, float64, cached per context (one SVD each, shared by every spectral measure)."""
    return ctx.cached(f"spectral.spec_sq(shared={ctx.options.shared_weights})", lambda: {
        name: float(torch.linalg.matrix_norm(w.to(torch.float64), 2)) ** 2
        for name, w in ctx.path_weights().items()})


def _log_sum(values) -> float:
    return sum(math.log(v) for v in values)


def _log_prod_spec(ctx: MeasureContext) -> float:
    return _log_sum(spectral_sq(ctx).values())


def _log_prod_fro(ctx: MeasureContext) -> float:
    return _log_sum(frobenius_sq(ctx, path=True).values())


def _sum_form(ctx: MeasureContext, log_prod: float) -> float:
    # d (Π_i ‖W_i‖²)^{1/d}: the minimum of Σ_i ‖W_i‖² over layer-wise rescalings of a homogeneous network.
    d = len(ctx.path_weights())
    return math.log(d) + log_prod / d


def _fro_over_spec(ctx: MeasureContext) -> float:
    spec = spectral_sq(ctx)
    return sum(f / spec[name] for name, f in frobenius_sq(ctx, path=True).items())


@register_measure("dist-spec-init", family="spectral", needs_init=True)
def dist_spec_init(ctx: MeasureContext) -> float:
    """Σ_i ‖W_i − W_i⁰‖²₂, spectral distance from initialisation (Jiang eq. 41)."""
    init = ctx.init_path_weights()
    return sum(float(torch.linalg.matrix_norm(w.to(torch.float64) - init[name].to(torch.float64), 2)) ** 2
               for name, w in ctx.path_weights().items())


@register_measure("log-prod-of-spec", family="spectral")
def log_prod_of_spec(ctx: MeasureContext) -> float:
    """Σ_i log ‖W_i‖²₂ = log Π_i ‖W_i‖²₂ (Jiang eq. 32)."""
    return _log_prod_spec(ctx)


@register_measure("log-sum-of-spec", family="spectral")
def log_sum_of_spec(ctx: MeasureContext) -> float:
    """log d_L + (1/d_L) Σ_i log ‖W_i‖²₂ = log of d_L (Π_i ‖W_i‖²₂)^{1/d_L} (Jiang eq. 35)."""
    return _sum_form(ctx, _log_prod_spec(ctx))


@register_measure("log-prod-of-spec-over-margin", family="spectral", needs_data=True)
def log_prod_of_spec_over_margin(ctx: MeasureContext) -> float:
    """Σ_i log ‖W_i‖²₂ − 2 log γ (Jiang eq. 31); undefined when γ ≤ 0."""
    return _log_prod_spec(ctx) - log_margin_sq(ctx)


@register_measure("log-sum-of-spec-over-margin", family="spectral", needs_data=True)
def log_sum_of_spec_over_margin(ctx: MeasureContext) -> float:
    """log d_L + (1/d_L)(Σ_i log ‖W_i‖²₂ − 2 log γ) (Jiang eq. 34); undefined when γ ≤ 0."""
    return _sum_form(ctx, _log_prod_spec(ctx) - log_margin_sq(ctx))


@register_measure("log-prod-of-fro", family="spectral")
def log_prod_of_fro(ctx: MeasureContext) -> float:
    """Σ_i log ‖W_i‖²_F = log Π_i ‖W_i‖²_F (Jiang eq. 37)."""
    return _log_prod_fro(ctx)


@register_measure("log-sum-of-fro", family="spectral")
def log_sum_of_fro(ctx: MeasureContext) -> float:
    """log d_L + (1/d_L) Σ_i log ‖W_i‖²_F (Jiang eq. 39)."""
    return _sum_form(ctx, _log_prod_fro(ctx))


@register_measure("log-prod-of-fro-over-margin", family="spectral", needs_data=True)
def log_prod_of_fro_over_margin(ctx: MeasureContext) -> float:
    """Σ_i log ‖W_i‖²_F − 2 log γ (Jiang eq. 36); undefined when γ ≤ 0."""
    return _log_prod_fro(ctx) - log_margin_sq(ctx)


@register_measure("log-sum-of-fro-over-margin", family="spectral", needs_data=True)
def log_sum_of_fro_over_margin(ctx: MeasureContext) -> float:
    """log d_L + (1/d_L)(Σ_i log ‖W_i‖²_F − 2 log γ) (Jiang eq. 38); undefined when γ ≤ 0."""
    return _sum_form(ctx, _log_prod_fro(ctx) - log_margin_sq(ctx))


@register_measure("fro-over-spec", family="spectral")
def fro_over_spec(ctx: MeasureContext) -> float:
    """Σ_i ‖W_i‖²_F / ‖W_i‖²₂, the summed stable ranks (Jiang eq. 33), not logged."""
    return _fro_over_spec(ctx)


@register_measure("log-spec-init-main", family="spectral", needs_data=True, needs_init=True)
def log_spec_init_main(ctx: MeasureContext) -> float:
    """log of (Π_i ‖W_i‖²₂/γ²) Σ_i ‖W_i − W_i⁰‖²_F/‖W_i‖²₂ (Jiang eq. 29); undefined when γ ≤ 0 or w = w⁰."""
    spec = spectral_sq(ctx)
    ratio = sum(dist / spec[name] for name, dist in frobenius_dist_sq(ctx, path=True).items())
    if not ratio > 0:
        raise MeasureUndefined("every weight matrix equals its initial value: Σ_i ‖W_i − W_i⁰‖²_F/‖W_i‖²₂ = 0 and "
                               "its log is undefined")
    return _log_prod_spec(ctx) - log_margin_sq(ctx) + math.log(ratio)


@register_measure("log-spec-orig-main", family="spectral", needs_data=True)
def log_spec_orig_main(ctx: MeasureContext) -> float:
    """log of (Π_i ‖W_i‖²₂/γ²) Σ_i ‖W_i‖²_F/‖W_i‖²₂ (Jiang eq. 30); undefined when γ ≤ 0."""
    return _log_prod_spec(ctx) - log_margin_sq(ctx) + math.log(_fro_over_spec(ctx))
