"""Training to a cross-entropy target (Jiang et al.'s stopping rule), resumable from a saved state.

AdamW with linear warmup then cosine decay per step; plain CE (label smoothing 0 by default, so that the
generalization gap means what it says). After every epoch the full training and test sets are evaluated in
eval mode; training stops once train CE <= ``target_ce`` or at ``max_epochs``. NaN/inf loss or weights end the
run as ``diverged`` with the epoch it happened in.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .data import Dataset
from .errors import BadValueError


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
    loss_sum, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        logits = model(x[i:i + batch_size])
        loss_sum += F.cross_entropy(logits.double(), y[i:i + batch_size], reduction="sum").item()
        correct += (logits.argmax(1) == y[i:i + batch_size]).sum().item()
    model.train(was_training)
    return loss_sum / len(x), correct / len(x)


def make_optimizer(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup, total = cfg.warmup_epochs * steps_per_epoch, cfg.max_epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total))
    return optimizer, scheduler


def _finite(model: nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in model.parameters())


def resolve_device(device: str | None) -> torch.device:
    """``auto`` (or None) picks CUDA when available, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise BadValueError(f"device {device!r} requested but this torch build sees no CUDA GPU; use --device cpu")
    return resolved


def train_model(model: nn.Module, data: Dataset, cfg: TrainConfig, *, resume: dict | None = None,
                on_epoch: Callable[[int, Callable[[], dict], dict], None] | None = None,
                progress: bool = False, device: str | None = "cpu") -> dict:
    """Train ``model`` in place; return the run's metrics.

    ``resume`` is a state produced earlier by this function (through ``on_epoch``); training continues from it
    with the same optimizer, scheduler and RNG state, so the final weights equal an uninterrupted run's.
    ``on_epoch(epoch, get_state, record)`` is called after every epoch; ``get_state()`` builds the full
    resumable state (only called when the caller wants to save it). ``device`` is a runtime choice, not part of
    the run's config; bit-identical resume is guaranteed on the CPU (CUDA kernels need not be deterministic).
    """
    cfg.validate()
    device = resolve_device(device)
    model.to(device)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    n = len(x_train)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    optimizer, scheduler = make_optimizer(model, cfg, steps_per_epoch)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # dropout draws come from the global generator
    epoch, step, elapsed, history, status = 0, 0, 0.0, [], "running"
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        shuffle.set_state(resume["shuffle_rng"])
        torch.set_rng_state(resume["torch_rng"])
        epoch, step, elapsed = resume["epoch"], resume["step"], resume["elapsed"]
        history = list(resume["history"])
    last = history[-1] if history else None
    reached = bool(last and last["train_loss"] <= cfg.target_ce)

    def get_state() -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "shuffle_rng": shuffle.get_state(),
                "torch_rng": torch.get_rng_state(), "epoch": epoch, "step": step, "elapsed": elapsed,
                "history": history}

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.max_epochs, initial=epoch, desc="train", unit="epoch", leave=False)
    diverged_at = None
    model.train()
    while epoch < cfg.max_epochs and not reached:
        start = time.perf_counter()
        order = torch.randperm(n, generator=shuffle).to(device)
        for i in range(0, n, cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx],
                                   label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                diverged_at = epoch + 1
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
        epoch += 1
        if diverged_at is None and not _finite(model):
            diverged_at = epoch
        if diverged_at is not None:
            elapsed += time.perf_counter() - start
            status = "diverged"
            break
        train_loss, train_acc = evaluate(model, x_train, y_train, cfg.eval_batch_size)
        test_loss, test_acc = evaluate(model, x_test, y_test, cfg.eval_batch_size)
        elapsed += time.perf_counter() - start
        record = {"epoch": epoch, "step": step, "lr": optimizer.param_groups[0]["lr"], "seconds": elapsed,
                  "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc}
        history.append(record)
        if not math.isfinite(train_loss) or not math.isfinite(test_loss):
            status, diverged_at = "diverged", epoch
            break
        reached = train_loss <= cfg.target_ce
        if bar is not None:
            bar.update(1)
            bar.set_postfix(train_ce=f"{train_loss:.3f}", test_acc=f"{test_acc:.3f}")
        if on_epoch is not None:
            on_epoch(epoch, get_state, record)
    if bar is not None:
        bar.close()
    if status != "diverged":
        status = "done"
    return summarize(history, status, reached, epoch, step, elapsed, diverged_at)


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
