"""The one training loop: a single run is a group of one, an ensemble group is E runs trained as one stacked
computation, and an extra loss term (the SRR regularisation experiment) comes in through a hook.

What a run is (Jiang et al.'s protocol): AdamW with linear warmup then cosine decay per step; plain CE (label
smoothing 0 by default, so that the generalization gap means what it says); training stops once the training-set
CE <= ``target_ce`` or at ``max_epochs``; NaN/inf loss or weights end the run as ``diverged`` with the epoch it
happened in. A state saved after any epoch (``on_epoch``'s ``get_state``, format ``STATE_FORMAT``) resumes to the
same bits as an uninterrupted run on the CPU.

Runs share a group (``zoo.config.ensemble_key``) when they differ only in learning rate, dropout and seed. Each
member keeps everything a run of its own has: its learning rate, dropout rate, data order and dropout masks
(generators seeded with its seed), AdamW state (``zoo.optimizer``), stopping point, checkpoints and resumable
state. The forward pass is ``zoo.models.crate_forward`` over the members' stacked parameters. After an epoch the
train CE is evaluated only where it can decide the stop and the test set only at the epochs whose weights are kept
(checkpoint epochs and the last); elsewhere log.csv has NaN (``zoo.stopping``). A non-finite test CE ends a run as
diverged where it is evaluated (weights are checked every epoch).

What equals what (tested): a member's weights do not depend on which runs share its group or where it sits in it,
bit for bit on the CPU. Against the plain one-model loop (``benchmark.reference.train_plain``: torch.optim.AdamW on
the nn.Module) the forward pass and the dropout masks are bit-identical, but batched gradient reductions sum in
another order, so weights agree to float rounding and final metrics to float tolerance, not bit for bit.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .data import Dataset
from .errors import BadValueError
from .models import CRATE, MemberDropout, ModelConfig, crate_forward
from .optimizer import FlatParameters
from .stopping import (NOT_EVALUATED, decisive_ce, evaluate_members, evaluate_train_set, mean_ce_and_accuracy,
                       member_rows)

STATE_FORMAT = "ensemble-1"  # tag of a run's resumable state

# extra_loss(params, features, y) -> (E,): a term added to each member's mean CE of a step; ``params`` are the
# training members' stacked parameters, ``features`` the per-layer Z_in, Z_half, Z_out (E, B, N, d) of the step and
# ``y`` its labels (E, B). When a member's loss is not finite the others redo the step, calling it again.
ExtraLoss = Callable[[dict, list, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.05
    max_epochs: int = 200
    warmup_epochs: int = 5          # linear warmup, then cosine decay to 0 over the remaining max_epochs
    target_ce: float = 0.01         # Jiang et al.: stop when the training cross-entropy reaches this
    label_smoothing: float = 0.0
    seed: int = 0
    checkpoint_epochs: tuple[int, ...] = ()  # extra checkpoints for layer-wise curves (init and final always kept)
    eval_batch_size: int = 1024

    def validate(self) -> "TrainConfig":
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"train lr must be a positive number, got {self.lr!r}")
        for name in ("batch_size", "max_epochs", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"train.{name} must be a positive integer, got {value!r}")
        for name in ("lr", "weight_decay", "target_ce", "label_smoothing"):   # nan passes every comparison below
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"train.{name} must be a finite number, got {getattr(self, name)!r}")
        if self.warmup_epochs < 0 or self.weight_decay < 0 or self.target_ce < 0:
            raise ValueError("train warmup_epochs, weight_decay and target_ce must be >= 0")
        if any(not isinstance(e, int) or e <= 0 for e in self.checkpoint_epochs):
            raise ValueError(f"train checkpoint_epochs must be positive epochs, got {list(self.checkpoint_epochs)}")
        beyond = [e for e in self.checkpoint_epochs if e > self.max_epochs]
        if beyond:   # such a checkpoint is never written, and layer-wise curves would silently lack it
            raise ValueError(f"train checkpoint_epochs {beyond} lie beyond max_epochs = {self.max_epochs}: they would "
                             f"never be saved")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"train label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        return self


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup to 1, then half-cosine to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on (x, y), eval mode."""
    was_training = model.training
    model.eval()
    (result,) = mean_ce_and_accuracy(lambda batch: model(batch).unsqueeze(0), x, y, batch_size)
    model.train(was_training)
    return result


def resolve_device(device: str | None) -> torch.device:
    """``auto`` (or None) picks CUDA when available, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise BadValueError(f"device {device!r} requested but this torch build sees no CUDA GPU; use --device cpu")
    return resolved


@dataclass
class Member:
    """One run inside an ensemble: its settings, generators and progress."""
    name: str
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    shuffle: torch.Generator
    dropout_rng: torch.Generator
    epoch: int = 0
    step: int = 0
    elapsed: float = 0.0
    history: list = field(default_factory=list)
    status: str = "running"
    diverged_at: int | None = None
    reached: bool = False


def train_ensemble(models: list[CRATE], names: list[str], train_cfgs: list[TrainConfig], data: Dataset, *,
                   resume: list[dict | None] | None = None,
                   on_epoch: Callable[[int, int, Callable[[], dict], dict], None] | None = None,
                   on_finish: Callable[[int, dict, dict], None] | None = None,
                   extra_loss: ExtraLoss | None = None, device: str | None = "cpu") -> list[dict]:
    """Train ``models`` (one architecture; same batch size, schedule and CE target) together; return their metrics.

    ``train_cfgs[e]`` may differ from the others in ``lr`` and ``seed`` only; the dropout rate comes from
    ``models[e].config``. ``resume[e]`` is a state built by ``on_epoch``'s ``get_state`` for member e (or None to
    start from the model's current weights); members may resume from different epochs.
    ``on_epoch(e, epoch, get_state, record)`` runs after every epoch of member e; ``on_finish(e, metrics, weights)``
    runs once when member e stops (target reached, diverged, or max_epochs), with its final state dict, so that its
    results are saved at once. ``extra_loss`` (see ``ExtraLoss``) adds a term to every member's training loss.
    ``device`` is a runtime choice, not part of a run's config; bit-identical resume is guaranteed on the CPU.
    """
    cfgs = [c.validate() for c in train_cfgs]
    base = cfgs[0]
    for c in cfgs:
        if (c.batch_size, c.max_epochs, c.warmup_epochs, c.weight_decay, c.target_ce, c.label_smoothing,
                c.eval_batch_size) != (base.batch_size, base.max_epochs, base.warmup_epochs, base.weight_decay,
                                       base.target_ce, base.label_smoothing, base.eval_batch_size):
            raise ValueError("ensemble members must share batch size, schedule, weight decay, CE target and "
                             "label smoothing; only lr, seed and dropout may differ")
    arch = {dataclasses.replace(m.config, dropout=0.0) for m in models}
    if len(arch) != 1:
        raise ValueError("ensemble members must share one architecture (only dropout may differ)")
    device = resolve_device(device)
    model_cfg = models[0].config
    stack = FlatParameters(models, device)
    members = [Member(name, m.config, c, torch.Generator().manual_seed(c.seed), torch.Generator().manual_seed(c.seed))
               for name, m, c in zip(names, models, cfgs)]
    for row, state in enumerate(resume or []):
        if state is not None:
            _restore(members[row], stack, row, state)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    n, bs = len(x_train), base.batch_size
    steps_per_epoch = math.ceil(n / bs)
    warmup, total = base.warmup_epochs * steps_per_epoch, base.max_epochs * steps_per_epoch
    results: list[dict | None] = [None] * len(members)
    active = list(range(len(members)))   # member index of each row of the stack

    def kept_epoch(m: Member) -> bool:   # an epoch whose weights are saved: its log.csv row is complete
        return m.epoch >= base.max_epochs or m.epoch in m.train_cfg.checkpoint_epochs

    def finish(row_members: list[int]) -> None:
        for row, e in enumerate(active):
            if e not in row_members:
                continue
            m = members[e]
            if m.status != "diverged":
                m.status = "done"
            results[e] = summarize(m.history, m.status, m.reached, m.epoch, m.step, m.elapsed, m.diverged_at)
            if on_finish is not None:
                on_finish(e, results[e], stack.member_state_dict(row))
        keep = [row for row, e in enumerate(active) if e not in row_members]
        if keep:
            stack.keep(keep)
        active[:] = [active[row] for row in keep]

    finish([e for e in active if members[e].reached or members[e].epoch >= base.max_epochs])
    while active:
        start = time.perf_counter()
        orders = torch.stack([torch.randperm(n, generator=members[e].shuffle) for e in active]).to(device)
        for i in range(0, n, bs):
            while active:
                rng_states = [members[e].dropout_rng.get_state() for e in active]
                dropout = MemberDropout([members[e].model_cfg.dropout for e in active],
                                        [members[e].dropout_rng for e in active])
                idx = orders[:, i:i + bs]
                logits = crate_forward(model_cfg, stack.params, x_train[idx], dropout,
                                       return_features=extra_loss is not None)                 # (E, b, C)
                if extra_loss is not None:
                    logits, features = logits
                e_rows, b = idx.shape
                losses = F.cross_entropy(logits.flatten(0, 1), y_train[idx].flatten(),
                                         label_smoothing=base.label_smoothing, reduction="none").view(e_rows, b)
                losses = losses.mean(1)
                if extra_loss is not None:
                    losses = losses + extra_loss(stack.params, features, y_train[idx])
                finite = torch.isfinite(losses).tolist()
                if all(finite):
                    break
                # a member whose loss is not finite stops in this epoch; the others redo the step with the same
                # dropout draws
                for row, e in enumerate(active):
                    members[e].dropout_rng.set_state(rng_states[row])
                    if not finite[row]:
                        m = members[e]
                        m.epoch += 1
                        m.status, m.diverged_at = "diverged", m.epoch
                orders = orders[[row for row, ok in enumerate(finite) if ok]]
                finish([e for row, e in enumerate(active) if not finite[row]])
            if not active:
                break
            grad = stack.flat_grad(losses.sum())
            for e in active:
                members[e].step += 1
            stack.adamw_step(grad, [members[e].train_cfg.lr * lr_factor(members[e].step - 1, warmup, total)
                                    for e in active],
                             [members[e].step for e in active], base.weight_decay)
        if not active:
            break
        finite_rows = stack.finite_rows().tolist()
        per_member = (time.perf_counter() - start) / len(active)
        for row, e in enumerate(active):
            m = members[e]
            m.epoch += 1
            m.elapsed += per_member
            if not finite_rows[row]:
                m.status, m.diverged_at = "diverged", m.epoch
        start = time.perf_counter()
        # the training set is evaluated in full only where it may decide the stop (see evaluate_train_set) and at
        # the epochs that are kept (checkpoints, the last); the test set only at those
        train_eval = evaluate_train_set(model_cfg, stack.params, x_train, y_train, base.eval_batch_size,
                                        [decisive_ce(members[e].history, base.target_ce) for e in active],
                                        full=[kept_epoch(members[e]) for e in active])
        stopping = [members[e].status != "diverged" and result is not None
                    and (not math.isfinite(result[0]) or result[0] <= base.target_ce
                         or members[e].epoch >= base.max_epochs)
                    for result, e in zip(train_eval, active)]
        test_rows = [row for row, e in enumerate(active) if stopping[row] or kept_epoch(members[e])]
        test_eval = dict(zip(test_rows, evaluate_members(model_cfg, member_rows(stack.params, test_rows), x_test,
                                                         y_test, base.eval_batch_size) if test_rows else []))
        per_member = (time.perf_counter() - start) / len(active)
        stopped = []
        for row, e in enumerate(active):
            m = members[e]
            if m.status == "diverged":
                stopped.append(e)
                continue
            m.elapsed += per_member
            (train_loss, train_acc), (test_loss, test_acc) = (train_eval[row] or NOT_EVALUATED,
                                                              test_eval.get(row, NOT_EVALUATED))
            lr_now = m.train_cfg.lr * lr_factor(m.step, warmup, total)
            record = {"epoch": m.epoch, "step": m.step, "lr": lr_now, "seconds": m.elapsed,
                      "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss,
                      "test_acc": test_acc}
            m.history.append(record)
            if (train_eval[row] is not None and not math.isfinite(train_loss)
                    or row in test_eval and not math.isfinite(test_loss)):
                m.status, m.diverged_at = "diverged", m.epoch
                stopped.append(e)
                continue
            m.reached = train_eval[row] is not None and train_loss <= base.target_ce
            if on_epoch is not None:
                on_epoch(e, m.epoch, lambda row=row, m=m: _state(m, stack, row), record)
            if m.reached or m.epoch >= base.max_epochs:
                stopped.append(e)
        if stopped:
            finish(stopped)
    return results


def train_model(model: CRATE, data: Dataset, cfg: TrainConfig, *, resume: dict | None = None,
                on_epoch: Callable[[int, Callable[[], dict], dict], None] | None = None,
                extra_loss: ExtraLoss | None = None, device: str | None = "cpu") -> dict:
    """Train ``model`` in place as a group of one (``train_ensemble``); return the run's metrics.

    ``resume`` is a state saved through ``on_epoch(epoch, get_state, record)``; the final (or diverged) weights
    are copied back into ``model``."""
    final: dict[str, torch.Tensor] = {}
    [metrics] = train_ensemble(
        [model], ["model"], [cfg], data, resume=[resume],
        on_epoch=None if on_epoch is None else lambda _, epoch, get_state, record: on_epoch(epoch, get_state, record),
        on_finish=lambda _, metrics, weights: final.update(weights), extra_loss=extra_loss, device=device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(final[name])
    return metrics


def _state(m: Member, stack: FlatParameters, row: int) -> dict:
    exp_avg, exp_avg_sq = stack.member_moments(row)
    return {"format": STATE_FORMAT, "model": stack.member_state_dict(row), "exp_avg": exp_avg,
            "exp_avg_sq": exp_avg_sq, "shuffle_rng": m.shuffle.get_state(), "dropout_rng": m.dropout_rng.get_state(),
            "epoch": m.epoch, "step": m.step, "elapsed": m.elapsed, "history": list(m.history)}


def _restore(m: Member, stack: FlatParameters, row: int, state: dict) -> None:
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"member {m.name}: not a training state of format {STATE_FORMAT!r} "
                         f"(format {state.get('format')!r})")
    stack.load_member(row, state)
    m.shuffle.set_state(state["shuffle_rng"])
    m.dropout_rng.set_state(state["dropout_rng"])
    m.epoch, m.step, m.elapsed = state["epoch"], state["step"], state["elapsed"]
    m.history = list(state["history"])
    m.reached = bool(m.history and m.history[-1]["train_loss"] <= m.train_cfg.target_ce)


def summarize(history: list[dict], status: str, reached: bool, epoch: int, step: int, elapsed: float,
              diverged_at: int | None) -> dict:
    last = history[-1] if history and status == "done" else None
    nan = float("nan")
    metrics = {"status": status, "reached_target": bool(reached), "epochs": epoch, "steps": step,
               "seconds": elapsed, "diverged_epoch": diverged_at,
               "train_loss": last["train_loss"] if last else nan, "test_loss": last["test_loss"] if last else nan,
               "train_acc": last["train_acc"] if last else nan, "test_acc": last["test_acc"] if last else nan}
    metrics["gap_loss"] = metrics["test_loss"] - metrics["train_loss"]
    metrics["gap_acc"] = metrics["train_acc"] - metrics["test_acc"]
    return metrics
