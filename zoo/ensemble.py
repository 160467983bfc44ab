"""Ensemble training: the runs of one group train together as one stacked computation.

Runs share a group (``ensemble_key``) when they differ only in learning rate, dropout and seed: same data,
architecture, batch size and schedule. Each member keeps everything ``train_model`` gives a run of its own: its
learning rate, its dropout rate, its data order and dropout masks (generators seeded with its seed as
``train_model`` seeds them), its AdamW state, its stopping point (CE target, divergence, max_epochs), its
checkpoints and its resumable state. The forward pass is ``zoo.stacked.stacked_logits``; AdamW runs on all members'
trainable parameters at once as one flat (E, P) tensor, op for op torch's AdamW arithmetic, with the per-member
learning rates as columns.

Why it is faster: these models are so small that a training step costs mostly per-operation overhead (Python,
dispatch, an optimizer loop over ~20 tensors); a stacked step pays it once for E models.

What is evaluated after an epoch: the stopping rule reads the training set's mean CE, but it needs the full pass
only when a cheap bound cannot decide. The CE of the first ``PROBE_IMAGES`` training images, summed and divided by
n, is a lower bound (every image's CE is >= 0); when it is above the target (by a 1% safety margin) the run goes
on, exactly as the full pass would say, and that epoch's log.csv row has no train CE (NaN). The test set is
evaluated only at epochs whose weights are kept (checkpoint epochs and the last), where train and test columns are
both complete; elsewhere test columns are NaN. So the stopping epoch, the weights and the final metrics are those
of a full evaluation every epoch, bit for bit (tested). A non-finite test CE ends a run as diverged where it is
evaluated (weights are checked for NaN/inf every epoch).

What equals what (tested): a member's weights do not depend on which runs share its group or where it sits in it,
bit for bit on the CPU, so a resumed build with other group members gives the same models. Against ``train_model``
the forward pass and the dropout masks are bit-identical, but batched gradient reductions sum in another order, so
weights agree to float rounding and final metrics to float tolerance, not bit for bit.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .data import Dataset
from .config import RunConfig, config_hash
from .models import CRATE, ModelConfig
from .stacked import StackedDropout, stacked_logits
from .train import TrainConfig, lr_factor, resolve_device, summarize

ADAM_BETAS = (0.9, 0.999)   # torch.optim.AdamW's defaults, which train.make_optimizer uses
ADAM_EPS = 1e-8
STATE_FORMAT = "ensemble-1"  # tag of a member's resumable state (train_model's state has no tag)
_PAD = 64                    # columns per member padded to a multiple of this: every member's row is vectorised alike


def ensemble_key(cfg: RunConfig) -> str:
    """Runs with equal keys can train as one ensemble: their configs differ only in lr, dropout and seed."""
    d = cfg.canonical()
    d["train"]["lr"] = d["train"]["seed"] = d["model"]["dropout"] = None
    return config_hash(d)


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


@torch.no_grad()
def evaluate_members(cfg: ModelConfig, params: dict, x: torch.Tensor, y: torch.Tensor,
                     batch_size: int) -> list[tuple[float, float]]:
    """(mean CE, accuracy) of every member on the shared (x, y) in eval mode, summed exactly as
    ``train.evaluate`` sums them, so a member's numbers equal ``evaluate`` of its saved weights."""
    loss_sum, correct = None, None
    for i in range(0, len(x), batch_size):
        logits = stacked_logits(cfg, params, x[i:i + batch_size])                     # (E, b, C)
        yb = y[i:i + batch_size]
        losses = [F.cross_entropy(member.double(), yb, reduction="sum").item() for member in logits]
        hits = (logits.argmax(-1) == yb).sum(1).tolist()
        loss_sum = losses if loss_sum is None else [a + b for a, b in zip(loss_sum, losses)]
        correct = hits if correct is None else [a + b for a, b in zip(correct, hits)]
    return [(loss / len(x), hits / len(x)) for loss, hits in zip(loss_sum, correct)]


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


def train_ensemble(models: list[CRATE], names: list[str], train_cfgs: list[TrainConfig], data: Dataset, *,
                   resume: list[dict | None] | None = None,
                   on_epoch: Callable[[int, int, Callable[[], dict], dict], None] | None = None,
                   on_finish: Callable[[int, dict, dict], None] | None = None,
                   device: str | None = "cpu") -> list[dict]:
    """Train ``models`` (one architecture; same batch size, schedule and CE target) together; return their metrics.

    ``train_cfgs[e]`` may differ from the others in ``lr`` and ``seed`` only; the dropout rate comes from
    ``models[e].config``. ``resume[e]`` is a state built by ``on_epoch``'s ``get_state`` for member e (or None to
    start from the model's current weights); members may resume from different epochs.
    ``on_epoch(e, epoch, get_state, record)`` runs after every epoch of member e; ``on_finish(e, metrics, weights)``
    runs once when member e stops (target reached, diverged, or max_epochs), with its final state dict, so that its
    results are saved at once.
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
                dropout = StackedDropout([members[e].model_cfg.dropout for e in active],
                                         [members[e].dropout_rng for e in active])
                idx = orders[:, i:i + bs]
                logits = stacked_logits(model_cfg, stack.params, x_train[idx], dropout)       # (E, b, C)
                e_rows, b = idx.shape
                losses = F.cross_entropy(logits.flatten(0, 1), y_train[idx].flatten(),
                                         label_smoothing=base.label_smoothing, reduction="none").view(e_rows, b)
                losses = losses.mean(1)
                finite = torch.isfinite(losses).tolist()
                if all(finite):
                    break
                # a member whose loss is not finite stops in this epoch, as in train_model; the others redo the
                # step with the same dropout draws
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


def _state(m: Member, stack: FlatParameters, row: int) -> dict:
    exp_avg, exp_avg_sq = stack.member_moments(row)
    return {"format": STATE_FORMAT, "model": stack.member_state_dict(row), "exp_avg": exp_avg,
            "exp_avg_sq": exp_avg_sq, "shuffle_rng": m.shuffle.get_state(), "dropout_rng": m.dropout_rng.get_state(),
            "epoch": m.epoch, "step": m.step, "elapsed": m.elapsed, "history": list(m.history)}


def _restore(m: Member, stack: FlatParameters, row: int, state: dict) -> None:
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"member {m.name}: not an ensemble training state (format {state.get('format')!r})")
    stack.load_member(row, state)
    m.shuffle.set_state(state["shuffle_rng"])
    m.dropout_rng.set_state(state["dropout_rng"])
    m.epoch, m.step, m.elapsed = state["epoch"], state["step"], state["elapsed"]
    m.history = list(state["history"])
    m.reached = bool(m.history and m.history[-1]["train_loss"] <= m.train_cfg.target_ce)
