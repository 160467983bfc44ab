"""Heavy-tailed self-regularisation (Martin & Mahoney; the WeightWatcher tool): power-law exponents of the empirical
spectral densities of the weight matrices. Data-free.

For each weight matrix W of ``ctx.weights()`` (every 2-D parameter, each once: qkv, output maps, CRATE's ISTA
dictionary D, which is a bare ``nn.Parameter`` and not an ``nn.Linear``, the patch embedding and the head; in other
models also each convolution's (out, in·k) filter matrix), the
eigenvalues of WᵀW, λ_i = σ_i(W)² (WeightWatcher's default, no 1/N normalisation: α does not depend on it), are
fitted by a continuous power law p(λ) ∝ λ^{−α} for λ ≥ λ_min (Clauset, Shalizi & Newman 2009):

- for a given λ_min, the maximum-likelihood exponent is α = 1 + n / Σ_{λ_i ≥ λ_min} ln(λ_i / λ_min) (n tail points);
- λ_min is the candidate (each distinct eigenvalue leaving at least ``MIN_TAIL`` points in the tail) whose fit has
  the smallest Kolmogorov–Smirnov distance D = sup_λ |S(λ) − P(λ)| between the tail's empirical CDF S and the
  fitted P(λ) = 1 − (λ/λ_min)^{1−α}.

``ww-alpha`` is the mean of α over the matrices; ``ww-alpha-weighted`` the mean of α·log10 λ_max (WeightWatcher's
alpha_weighted). Eigenvalues below 1e-12·λ_max are numerically zero (rank deficiency) and left out. A matrix with
fewer than ``MIN_TAIL`` non-zero eigenvalues has no fit: the measures raise ``MeasureUndefined`` naming it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .context import MeasureContext, MeasureUndefined
from .registry import register_measure

__all__ = ["PowerLawFit", "power_law_mle", "fit_power_law", "matrix_power_laws"]

MIN_TAIL = 5          # fewer tail points make the KS minimum meaningless (a 2-point tail always fits)
_ZERO = 1e-12         # relative size below which an eigenvalue is a zero of a rank-deficient matrix


@dataclass(frozen=True)
class PowerLawFit:
    alpha: float        # exponent of p(x) ∝ x^{-alpha}
    x_min: float        # start of the fitted tail
    ks: float           # Kolmogorov-Smirnov distance of the fit on the tail
    n_tail: int         # points in the tail


def power_law_mle(x: np.ndarray, x_min: float) -> float:
    """Maximum-likelihood exponent 1 + n / Σ ln(x_i / x_min) of a continuous power law over x_i ≥ x_min.

    Examples
    --------
    >>> power_law_mle(np.array([1.0, math.e]), 1.0)    # 1 + 2 / (0 + 1)
    3.0
    """
    tail = np.asarray(x, dtype=np.float64)
    tail = tail[tail >= x_min]
    logs = np.log(tail / x_min).sum()
    if not logs > 0:
        raise ValueError(f"no spread above x_min = {x_min!r}: the exponent is unbounded")
    return float(1.0 + len(tail) / logs)


def fit_power_law(x: np.ndarray, min_tail: int = MIN_TAIL) -> PowerLawFit:
    """Power-law fit with x_min chosen by the smallest Kolmogorov–Smirnov distance (module docstring)."""
    x = np.sort(np.asarray(x, dtype=np.float64))
    if len(x) < min_tail or not x[0] > 0:
        raise ValueError(f"need at least {min_tail} positive values, got {len(x)} (min {x.min() if len(x) else None})")
    best = None
    for i in np.unique(np.searchsorted(x, x, side="left")):     # first index of each distinct value
        tail = x[i:]
        n = len(tail)
        if n < min_tail:
            break
        logs = np.log(tail / tail[0])
        if not logs.sum() > 0:
            continue
        alpha = 1.0 + n / logs.sum()
        model_cdf = 1.0 - np.exp((1.0 - alpha) * logs)
        steps = np.arange(n + 1) / n                            # the empirical CDF just before / after each point
        ks = max(float(np.max(steps[1:] - model_cdf)), float(np.max(model_cdf - steps[:-1])))
        if best is None or ks < best.ks:
            best = PowerLawFit(alpha=float(alpha), x_min=float(tail[0]), ks=ks, n_tail=n)
    if best is None:
        raise ValueError("every candidate tail is constant: no power law to fit")
    return best


def matrix_power_laws(ctx: MeasureContext) -> dict[str, tuple[PowerLawFit, float]]:
    """{matrix name: (power-law fit of its eigenvalues, λ_max)} over ``ctx.weights()``, cached per context."""
    def compute():
        out = {}
        for name, w in ctx.weights().items():
            eig = torch.linalg.svdvals(w.to(torch.float64)).square().numpy()
            eig = eig[eig > _ZERO * eig.max()] if eig.max() > 0 else eig[:0]
            if len(eig) < MIN_TAIL:
                raise MeasureUndefined(f"{name} has {len(eig)} non-zero eigenvalues; a power-law fit needs "
                                       f"{MIN_TAIL}")
            out[name] = (fit_power_law(eig), float(eig.max()))
        return out
    return ctx.cached("heavytail.fits", compute)


@register_measure("ww-alpha", family="heavy-tail")
def ww_alpha(ctx: MeasureContext) -> float:
    """Mean over weight matrices of the power-law exponent α of the eigenvalues of WᵀW (MLE, x_min by KS)."""
    return float(np.mean([fit.alpha for fit, _ in matrix_power_laws(ctx).values()]))


@register_measure("ww-alpha-weighted", family="heavy-tail")
def ww_alpha_weighted(ctx: MeasureContext) -> float:
    """Mean over weight matrices of α·log10 λ_max (WeightWatcher's alpha_weighted)."""
    return float(np.mean([fit.alpha * math.log10(lam) for fit, lam in matrix_power_laws(ctx).values()]))
