"""The trainable parameters of E models as one flat (E, P) tensor, and AdamW over it.

Why: these models are so small that a training step costs mostly per-operation overhead (Python, dispatch, an
optimizer loop over ~20 tensors); one in-place update of one tensor pays it once for E models. The update is
torch's AdamW arithmetic (single-tensor path) op for op, with the per-member learning rates and step counts as
columns; every member's row is padded to a multiple of ``_PAD`` columns so that it is vectorised alike whatever the
number of members (a member's bits do not depend on its group).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .models import CRATE

ADAM_BETAS = (0.9, 0.999)   # torch.optim.AdamW's defaults
ADAM_EPS = 1e-8
_PAD = 64                    # columns per member padded to a multiple of this: every member's row is vectorised alike


class FlatParameters:
    """The trainable parameters of E members as views of one (E, P) tensor, plus AdamW's two moments.

    ``params`` maps every CRATE parameter name to a stacked (E, *shape) tensor: trainable ones are leaf views into
    ``flat`` (so one in-place AdamW update moves them all), frozen ones (crate-fix's output map) plain stacks.
    """

    def __init__(self, models: list[CRATE], device: torch.device):
        named = [dict(m.named_parameters()) for m in models]
        first = named[0]
        self.trainable = [n for n, p in first.items() if p.requires_grad]
        self.frozen = {n: torch.stack([nm[n].detach() for nm in named]).to(device)
                       for n, p in first.items() if not p.requires_grad}
        self.shapes = {n: p.shape for n, p in first.items()}
        self.order = list(first)
        width = sum(first[n].numel() for n in self.trainable)
        self.width = width
        padded = -(-width // _PAD) * _PAD
        self.flat = torch.zeros(len(models), padded, dtype=first[self.trainable[0]].dtype, device=device)
        self.flat[:, :width] = torch.cat([torch.stack([nm[n].detach().reshape(-1) for nm in named])
                                          for n in self.trainable], dim=1)
        self.exp_avg = torch.zeros_like(self.flat)
        self.exp_avg_sq = torch.zeros_like(self.flat)
        self._make_views()

    def _make_views(self) -> None:
        self.params, offset = {}, 0
        for name in self.trainable:
            size = math.prod(self.shapes[name])
            view = self.flat[:, offset:offset + size].unflatten(1, self.shapes[name])
            self.params[name] = view.requires_grad_()
            offset += size
        self.params.update(self.frozen)

    def keep(self, rows: list[int]) -> None:
        """Drop every member not in ``rows`` (finished or diverged ones)."""
        index = torch.tensor(rows, device=self.flat.device)
        self.flat = self.flat[index].contiguous()
        self.exp_avg = self.exp_avg[index].contiguous()
        self.exp_avg_sq = self.exp_avg_sq[index].contiguous()
        self.frozen = {n: v[index].contiguous() for n, v in self.frozen.items()}
        self._make_views()

    def flat_grad(self, loss: torch.Tensor) -> torch.Tensor:
        grads = torch.autograd.grad(loss, [self.params[n] for n in self.trainable])
        g = torch.cat([gr.reshape(gr.shape[0], -1) for gr in grads], dim=1)
        return F.pad(g, (0, self.flat.shape[1] - self.width))

    def member_state_dict(self, row: int) -> dict[str, torch.Tensor]:
        return {n: self.params[n][row].detach().clone().cpu() for n in self.order}

    def member_moments(self, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.exp_avg[row, :self.width].clone().cpu(), self.exp_avg_sq[row, :self.width].clone().cpu()

    def load_member(self, row: int, state: dict) -> None:
        with torch.no_grad():
            for name in self.trainable:
                self.params[name][row].copy_(state["model"][name])
            for name, stacked in self.frozen.items():
                stacked[row].copy_(state["model"][name])
            self.exp_avg[row, :self.width] = state["exp_avg"].to(self.flat.device)
            self.exp_avg_sq[row, :self.width] = state["exp_avg_sq"].to(self.flat.device)

    @torch.no_grad()
    def adamw_step(self, grad: torch.Tensor, lrs: list[float], steps: list[int], weight_decay: float) -> None:
        """torch.optim.AdamW (single-tensor path) with member e at learning rate lrs[e] and step count steps[e]."""
        beta1, beta2 = ADAM_BETAS

        def column(values):
            return torch.tensor(values, dtype=self.flat.dtype, device=self.flat.device).unsqueeze(1)

        bias1 = [1 - beta1 ** float(s) for s in steps]
        bias2 = [1 - beta2 ** float(s) for s in steps]
        self.flat.mul_(column([1 - lr * weight_decay for lr in lrs]))
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (self.exp_avg_sq.sqrt() / column([b ** 0.5 for b in bias2])).add_(ADAM_EPS)
        self.flat.add_(self.exp_avg.mul(column([-lr / b for lr, b in zip(lrs, bias1)])).div_(denom))

    def finite_rows(self) -> torch.Tensor:
        return torch.isfinite(self.flat).all(dim=1)
