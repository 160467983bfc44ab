"""Output-margin measures (Jiang et al. eq. 22; measure-formulas §8.8) and the margin γ shared by the /margin forms.

γ is the ``options.margin_quantile`` (default 0.1) quantile over the training sample of the **signed** margin
f(x)[y] − max_{j≠y} f(x)[j]. The quantile is ``torch.quantile`` with linear interpolation (numpy's default
``np.quantile(..., method="linear")``): with margins sorted ascending m_(0) ≤ … ≤ m_(M−1) it is
m_(⌊h⌋) + (h − ⌊h⌋)(m_(⌊h⌋+1) − m_(⌊h⌋)) at h = q(M − 1). Unlike the RGM port's ``kthvalue(m // 10)`` it is defined
for every M ≥ 1, and it does not take |γ|: the port's abs silently turns a model that misclassifies more than 10% of
its training sample into one with a comfortable margin. When γ ≤ 0 every measure that needs log γ or 1/γ² raises
``MeasureUndefined`` with the signed value; the compute layer records NaN and the reason.
"""
from __future__ import annotations

import math

import torch

from .context import MeasureContext, MeasureUndefined
from .registry import register_measure

__all__ = ["MeasureUndefined", "sample_margins", "margin", "positive_margin", "log_margin_sq"]


def sample_margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Signed margins f(x)[y] − max_{j≠y} f(x)[j] in float64, one per row of ``logits`` (M, classes).

    Examples
    --------
    >>> sample_margins(torch.tensor([[3., 1., 0.], [0., 2., 1.]]), torch.tensor([0, 0])).tolist()
    [2.0, -2.0]
    """
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must have shape (M, classes >= 2), got {tuple(logits.shape)}")
    logits = logits.detach().to(torch.float64)
    y = y.to(torch.long)
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return true - others.max(dim=1).values


def margin(ctx: MeasureContext) -> float:
    """γ: the ``margin_quantile`` quantile (linear interpolation) of the signed sample margins; cached per context."""
    def compute() -> float:
        q = ctx.options.margin_quantile
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"margin_quantile must be in [0, 1], got {q!r}")
        return float(torch.quantile(sample_margins(ctx.logits(), ctx.y), q))
    return ctx.cached("margin.gamma", compute)


def positive_margin(ctx: MeasureContext, needs: str = "log γ is undefined") -> float:
    """γ when it is positive; otherwise raise ``MeasureUndefined`` naming the signed value."""
    gamma = margin(ctx)
    if not gamma > 0:
        q = ctx.options.margin_quantile
        raise MeasureUndefined(f"margin γ = {gamma:.6g} ≤ 0: the model misclassifies more than {q:.0%} of the "
                               f"sample, {needs}")
    return gamma


def log_margin_sq(ctx: MeasureContext) -> float:
    """2 log γ, the term every log-form /margin measure subtracts; raises ``MeasureUndefined`` when γ ≤ 0."""
    return 2.0 * math.log(positive_margin(ctx))


@register_measure("inverse-margin", family="margin", needs_data=True)
def inverse_margin(ctx: MeasureContext) -> float:
    """1/γ² with γ the signed 10th-percentile output margin (Jiang eq. 22); undefined (raises) when γ ≤ 0."""
    gamma = positive_margin(ctx, needs="1/γ² would rank it as if its margin were positive")
    return 1.0 / gamma ** 2


@register_measure("neg-margin", family="margin", needs_data=True)
def neg_margin(ctx: MeasureContext) -> float:
    """−γ, the negated signed 10th-percentile margin: defined for any sign of γ, so it still ranks poor fits."""
    # 1/γ² is monotone decreasing in γ only for γ > 0; −γ is monotone decreasing everywhere, so it orders the models
    # with γ > 0 exactly as 1/γ² does and keeps the models with γ ≤ 0 in the ranking (as the most complex ones)
    # instead of dropping them as NaN.
    return -margin(ctx)
