"""Calibration and confidence measures on the softmax outputs of the measures' sample (the family Nakai et al.
2026 found most predictive under distribution shift).

With p = softmax(f(x)), confidence c = max_j p_j and prediction ŷ = argmax_j p_j over the M samples:

- ``ece``: expected calibration error with B equal-width bins (default 15, ``options.ece_bins``),
  Σ_b (n_b / M) |acc_b − conf_b|, bin b = (b/B, (b+1)/B] (a confidence of exactly b/B falls in the lower bin);
- ``mean-confidence``: (1/M) Σ c;
- ``output-entropy``: (1/M) Σ −Σ_j p_j log p_j, in nats.

All in float64 from the shared logits (``ctx.logits()``).
"""
from __future__ import annotations

import torch

from .context import MeasureContext
from .registry import register_measure

__all__ = ["expected_calibration_error"]


def _probabilities(ctx: MeasureContext) -> torch.Tensor:
    return ctx.cached("calibration.softmax", lambda: torch.softmax(ctx.logits().to(torch.float64), dim=1))


def expected_calibration_error(probs: torch.Tensor, y: torch.Tensor, bins: int = 15) -> float:
    """Σ_b (n_b / M) |acc_b − conf_b| over ``bins`` equal-width confidence bins (b/B, (b+1)/B].

    Examples
    --------
    >>> p = torch.tensor([[0.9, 0.1], [0.6, 0.4]], dtype=torch.float64)   # both predict class 0
    >>> round(expected_calibration_error(p, torch.tensor([0, 1]), bins=10), 6)  # (|1 - .9| + |0 - .6|) / 2
    0.35
    """
    if bins < 1:
        raise ValueError(f"bins must be positive, got {bins!r}")
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == y).to(torch.float64)
    # ceil(c B) - 1 puts c in (b/B, (b+1)/B]; c >= 1/classes > 0, so the index is never -1
    index = (torch.ceil(confidence * bins) - 1).clamp(0, bins - 1).long()
    total = 0.0
    for b in index.unique().tolist():
        in_bin = index == b
        total += float(in_bin.sum()) * abs(float(correct[in_bin].mean() - confidence[in_bin].mean()))
    return total / len(y)


@register_measure("ece", family="calibration", needs_data=True)
def ece(ctx: MeasureContext) -> float:
    """Expected calibration error of the sample's predictions (options.ece_bins equal-width confidence bins)."""
    _, y = ctx.sample()
    return expected_calibration_error(_probabilities(ctx), y, ctx.options.ece_bins)


# Confident training predictions are the overfitting side, so a larger confidence reads as more complex.
@register_measure("mean-confidence", family="calibration", needs_data=True)
def mean_confidence(ctx: MeasureContext) -> float:
    """Mean over the sample of the largest softmax probability."""
    return float(_probabilities(ctx).max(dim=1).values.mean())


@register_measure("output-entropy", family="calibration", needs_data=True, higher_is_complex=False)
def output_entropy(ctx: MeasureContext) -> float:
    """Mean over the sample of the softmax entropy −Σ_j p_j log p_j (nats); higher reads as less complex."""
    p = _probabilities(ctx)
    # p log p -> 0 as p -> 0; xlogy gives exactly 0 for an underflowed probability instead of 0 * -inf = nan
    return float(-torch.special.xlogy(p, p).sum(dim=1).mean())
