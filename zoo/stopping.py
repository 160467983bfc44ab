"""What is evaluated after an epoch: the stopping rule's train CE, only where it can decide, and the test set.

The stopping rule reads the training set's mean CE, but it needs the full pass only when a cheap bound cannot
decide. The CE of the first ``PROBE_IMAGES`` training images, summed and divided by n, is a lower bound (every
image's CE is >= 0); when it is above the target (by a 1% safety margin) the run goes on, exactly as the full pass
would say, and that epoch's log.csv row has no train CE (NaN). So the stopping epoch, the weights and the final
metrics are those of a full evaluation every epoch, bit for bit (tested).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from .models import ModelConfig, crate_forward


@torch.no_grad()
def mean_ce_and_accuracy(logits_of: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                         batch_size: int) -> list[tuple[float, float]]:
    """(mean CE, accuracy) on (x, y) of every member of ``logits_of(batch)`` (E, b, classes), batch by batch, the CE
    summed in float64: the one evaluation of the zoo (``train.evaluate`` is E = 1), so a member's numbers equal
    ``evaluate`` of its saved weights."""
    loss_sum, correct = None, None
    for i in range(0, len(x), batch_size):
        logits = logits_of(x[i:i + batch_size])                                      # (E, b, C)
        yb = y[i:i + batch_size]
        losses = [F.cross_entropy(member.double(), yb, reduction="sum").item() for member in logits]
        hits = (logits.argmax(-1) == yb).sum(1).tolist()
        loss_sum = losses if loss_sum is None else [a + b for a, b in zip(loss_sum, losses)]
        correct = hits if correct is None else [a + b for a, b in zip(correct, hits)]
    return [(loss / len(x), hits / len(x)) for loss, hits in zip(loss_sum, correct)]


def evaluate_members(cfg: ModelConfig, params: dict, x: torch.Tensor, y: torch.Tensor,
                     batch_size: int) -> list[tuple[float, float]]:
    """(mean CE, accuracy) of every member of the stacked ``params`` on the shared (x, y) in eval mode."""
    return mean_ce_and_accuracy(lambda batch: crate_forward(cfg, params, batch), x, y, batch_size)


# The full training-set CE is computed only when a bound cannot decide the stop: CE is >= 0 per image, so
# (sum of CE over the first PROBE_IMAGES) / n is a lower bound of the mean over all n, and a bound above the target
# proves the run goes on. BOUND_SAFETY keeps a decision off the boundary by far more than the float32 rounding of
# the logits can move it (the probe computes them in a smaller batch). Epochs decided this way record no train CE.
# Divergence is caught by the weights' check every epoch; a skipped pass could only miss a non-finite CE of finite
# weights (activations overflowing float32 beyond the probe images), which the next evaluated epoch then records.
PROBE_IMAGES = 128
BOUND_SAFETY = 1.01
# Jiang et al.'s optimisation measures read the first epoch at these training CEs from log.csv (steps-to-ce-0.1,
# steps-ce-0.1-to-0.01): until a run has reached one, a bound may only skip the full pass when it is above that CE
# too (a milestone at or below the target needs nothing: the target's epoch is always evaluated).
CE_MILESTONES = (0.1, 0.01)
NOT_EVALUATED = (float("nan"), float("nan"))   # (loss, accuracy) in log.csv where a set was not evaluated


def member_rows(params: dict, rows: list[int]) -> dict:
    """The stacked parameters of the members at ``rows`` only (all of them: the same tensors, uncopied)."""
    if rows == list(range(params["head.weight"].shape[0])):
        return params
    index = torch.tensor(rows, device=params["head.weight"].device)
    return {name: value.detach()[index] for name, value in params.items()}


def decisive_ce(history: list[dict], target_ce: float) -> float:
    """The training CE a member's next evaluation must be compared with: the largest milestone above the target
    that its log has not reached yet, else the target.

    >>> decisive_ce([{"train_loss": 0.5}], 0.01), decisive_ce([{"train_loss": 0.5}, {"train_loss": 0.09}], 0.01)
    (0.1, 0.01)
    """
    pending = [t for t in CE_MILESTONES if t > target_ce and not any(r["train_loss"] <= t for r in history)]
    return max(pending, default=target_ce)


def evaluate_train_set(cfg: ModelConfig, params: dict, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                       thresholds: list[float], full: list[bool]) -> list[tuple[float, float] | None]:
    """Per member, ``evaluate_members``'s (train CE, accuracy), or None where the CE is proved above the member's
    threshold (``decisive_ce``) by the lower bound on the first ``PROBE_IMAGES`` images; ``full[e]`` forces the
    full pass. A non-finite bound is never trusted: that member gets the full pass (and its non-finite CE)."""
    rows = list(range(len(full)))
    if len(x) > PROBE_IMAGES:
        probe = evaluate_members(cfg, params, x[:PROBE_IMAGES], y[:PROBE_IMAGES], batch_size)
        bounds = [loss * PROBE_IMAGES / len(x) for loss, _ in probe]
        rows = [row for row in rows if full[row] or not (math.isfinite(bounds[row])
                                                         and bounds[row] > thresholds[row] * BOUND_SAFETY)]
    out: list[tuple[float, float] | None] = [None] * len(full)
    if rows:
        for row, result in zip(rows, evaluate_members(cfg, member_rows(params, rows), x, y, batch_size)):
            out[row] = result
    return out
