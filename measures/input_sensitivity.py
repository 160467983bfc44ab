"""Input sensitivity (the PGDL competition's baseline): how strongly the logits move with the input.

``jacobian-norm`` = (1/M) Σ_i ‖∂f(x_i)/∂x_i‖_F over the measures' sample, the Jacobian of the logits (classes) with
respect to the input image (C·H·W). In eval mode the samples of a batch do not interact, so row c of every sample's
Jacobian is the gradient of Σ_i f(x_i)[c] with respect to the batch: one backward pass per class.
"""
from __future__ import annotations

import torch

from .context import MeasureContext
from .registry import register_measure

__all__ = ["input_jacobian_norms"]


def input_jacobian_norms(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """‖∂f(x_i)/∂x_i‖_F per sample (M,), float64; ``model`` is only read (no ``.grad`` is written)."""
    x = x.detach().clone().requires_grad_(True)
    logits = model(x)                                                    # (M, classes)
    sq = torch.zeros(len(x), dtype=torch.float64)
    for c in range(logits.shape[1]):
        (row,) = torch.autograd.grad(logits[:, c].sum(), x, retain_graph=c + 1 < logits.shape[1])
        sq += row.reshape(len(x), -1).to(torch.float64).square().sum(1)  # ‖∂f_c/∂x_i‖²
    return sq.sqrt()


@register_measure("jacobian-norm", family="input-sensitivity", needs_data=True)
def jacobian_norm(ctx: MeasureContext) -> float:
    """Mean over the sample of the Frobenius norm of the input Jacobian d logits / d input."""
    x, _ = ctx.sample()
    return float(input_jacobian_norms(ctx.model, x).mean())
