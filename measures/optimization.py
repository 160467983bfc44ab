"""Optimisation-based measures (Jiang et al. 2020, §A.6: "number of steps" and "gradient noise").

- ``steps-to-ce-0.1``: optimisation steps until the training cross-entropy first reaches 0.1;
- ``steps-ce-0.1-to-0.01``: further steps from there until it first reaches 0.01 (Jiang's stopping target);
- ``grad-noise``: variance of the minibatch gradient at the final weights.

The step counts come from the training log (``runs/<id>/log.csv``, ``ctx.training_log``), which records the
full-training-set CE after every epoch with the step count at that point; a threshold is therefore located at epoch
resolution: the step of the first epoch whose logged CE is ≤ the threshold (an upper bound on Jiang's exact step,
by at most one epoch of steps). A model whose log never reaches a threshold, or a context without a log, has no
value (``MeasureUndefined``, NaN with the reason).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .context import MeasureContext, MeasureUndefined
from .registry import register_measure

__all__ = ["steps_to_ce", "minibatch_gradient_variance"]


def steps_to_ce(log: list[dict] | None, threshold: float) -> int:
    """``step`` of the first log row whose ``train_loss`` ≤ ``threshold``; ``MeasureUndefined`` if none.

    Examples
    --------
    >>> steps_to_ce([{"step": 10, "train_loss": 0.5}, {"step": 20, "train_loss": 0.08}], 0.1)
    20
    """
    if not log:
        raise MeasureUndefined("no training log (runs/<id>/log.csv) for this model: its optimisation steps are "
                               "unknown")
    for row in log:
        if row["train_loss"] <= threshold:
            return int(row["step"])
    raise MeasureUndefined(f"training CE never reached {threshold} in the log (last: {log[-1]['train_loss']:.4g} "
                           f"after {int(log[-1]['step'])} steps)")


@register_measure("steps-to-ce-0.1", family="optimization", needs_training_log=True)
def steps_to_ce_01(ctx: MeasureContext) -> float:
    """Optimisation steps until the training CE first reaches 0.1 (epoch resolution, from the training log)."""
    return float(steps_to_ce(ctx.training_log, 0.1))


@register_measure("steps-ce-0.1-to-0.01", family="optimization", needs_training_log=True)
def steps_ce_01_to_001(ctx: MeasureContext) -> float:
    """Optimisation steps from training CE 0.1 to 0.01 (epoch resolution, from the training log)."""
    return float(steps_to_ce(ctx.training_log, 0.01) - steps_to_ce(ctx.training_log, 0.1))


def minibatch_gradient_variance(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """(1/B) Σ_b ‖g_b − ḡ‖² over the B full minibatches of (x, y) in order, g_b the gradient of the batch's mean
    cross-entropy with respect to the trainable parameters and ḡ their mean; ``model`` is only read.

    Parameters
    ----------
    model : classifier in eval mode (dropout off); gradients come from ``torch.autograd.grad``, so no ``.grad`` is
        written and no weight changes.
    x, y : the sample; a last, incomplete batch is left out so that every g_b has the same noise level.
    batch_size : minibatch size.
    """
    n_batches = len(x) // batch_size
    if n_batches < 2:
        raise MeasureUndefined(f"gradient noise needs at least 2 minibatches of {batch_size}; the sample has "
                               f"{len(x)} images")
    params = [p for p in model.parameters() if p.requires_grad]
    grads = []
    for b in range(n_batches):
        sl = slice(b * batch_size, (b + 1) * batch_size)
        loss = F.cross_entropy(model(x[sl]), y[sl])
        # a parameter the loss does not reach (allow_unused) has gradient 0, not an error
        parts = torch.autograd.grad(loss, params, allow_unused=True)
        grads.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).to(torch.float64)
                                for g, p in zip(parts, params)]))
    g = torch.stack(grads)                                                   # (B, ω)
    return float((g - g.mean(0)).square().sum(1).mean())


@register_measure("grad-noise", family="optimization", needs_data=True)
def grad_noise(ctx: MeasureContext) -> float:
    """Variance of the minibatch gradient at the final weights: mean of ‖g_b − ḡ‖² over batches (grad_noise_batch)."""
    x, y = ctx.sample()
    return ctx.cached("optimization.grad_noise",
                      lambda: minibatch_gradient_variance(ctx.model, x, y, ctx.options.grad_noise_batch))
