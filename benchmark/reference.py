"""Plain sequential reference implementations, kept for the performance benchmark (``srrbench perf``) and as test
oracles.

``train_plain`` is the textbook one-model training loop that ``zoo.train`` replaces: torch.optim.AdamW on the
nn.Module, the full training and test sets evaluated after every epoch, the same stopping rule, schedule, data
order and dropout masks (so its weights agree with ``zoo.train.train_model``'s to float rounding).

``sigma_search_sequential`` is the textbook σ′ search that ``measures.pacbayes.sigma_search`` replaces: a deep copy
of the model whose weights are overwritten in place, one Monte-Carlo draw at a time, the whole sample in one
forward pass, no early stopping. It follows the same bisection rule and regenerates the same random draws (the
stream design in the ``measures.pacbayes`` docstring), so with the same ``seed`` both return the same σ′; the only
possible difference is an argmax tie broken differently by the batched kernels, which moves the drop by 1/(S·M).

``alpha_search_sequential`` is the textbook worst-case α′ search that ``measures.sharpness.alpha_search`` replaces
(every ascent step of every bisection step, on a deep copy); both return the same α′.

Example (the σ′ behind ``pacbayes-*`` for a context ``ctx``)::

    from measures.pacbayes import SIGMA_SALT, sigma_search
    seed = ctx.generator(SIGMA_SALT).initial_seed()
    fast = sigma_search(ctx.model, ctx.x, ctx.y, seed=seed)
    slow = sigma_search_sequential(ctx.model, ctx.x, ctx.y, seed=seed)   # == fast, many times slower
"""
from __future__ import annotations

import copy
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from zoo.data import Dataset
from zoo.train import TrainConfig, evaluate, lr_factor, summarize


def make_optimizer(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int):
    """torch.optim.AdamW on the trainable parameters, with ``zoo.train``'s warmup + cosine schedule per step."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup, total = cfg.warmup_epochs * steps_per_epoch, cfg.max_epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total))
    return optimizer, scheduler


def train_plain(model: nn.Module, data: Dataset, cfg: TrainConfig) -> dict:
    """Train ``model`` in place, one step at a time, evaluating both sets after every epoch; return its metrics
    (those of ``zoo.train.train_model``). Dropout draws come from the global generator, seeded with ``cfg.seed``
    (the masks ``train_model``'s member generator draws)."""
    cfg.validate()
    n = len(data.x_train)
    optimizer, scheduler = make_optimizer(model, cfg, math.ceil(n / cfg.batch_size))
    shuffle = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    epoch, step, elapsed, history, status, reached, diverged_at = 0, 0, 0.0, [], "running", False, None
    model.train()
    while epoch < cfg.max_epochs and not reached:
        start = time.perf_counter()
        order = torch.randperm(n, generator=shuffle)
        for i in range(0, n, cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx], label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                diverged_at = epoch + 1
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
        epoch += 1
        if diverged_at is None and not all(torch.isfinite(p).all() for p in model.parameters()):
            diverged_at = epoch
        if diverged_at is not None:
            status = "diverged"
            break
        train_loss, train_acc = evaluate(model, data.x_train, data.y_train, cfg.eval_batch_size)
        test_loss, test_acc = evaluate(model, data.x_test, data.y_test, cfg.eval_batch_size)
        elapsed += time.perf_counter() - start
        history.append({"epoch": epoch, "step": step, "lr": optimizer.param_groups[0]["lr"], "seconds": elapsed,
                        "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss,
                        "test_acc": test_acc})
        if not math.isfinite(train_loss) or not math.isfinite(test_loss):
            status, diverged_at = "diverged", epoch
            break
        reached = train_loss <= cfg.target_ce
    return summarize(history, "done" if status != "diverged" else status, reached, epoch, step, elapsed, diverged_at)


def sigma_search_sequential(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, seed: int = 0,
                            target_drop: float = 0.1, search_steps: int = 15, search_tolerance: float = 0.01,
                            mc_samples: int = 10, magnitude_eps: float | None = None) -> float:
    """σ′ (noise std) by bisection on [0, 2], evaluating one perturbed deep copy of ``model`` at a time.

    Parameters
    ----------
    model : network to probe; untouched (the noise goes into a deep copy).
    x, y : the fixed training sample, evaluated in one batch in eval mode.
    seed : seeds the draws exactly as ``measures.pacbayes.sigma_search(..., seed=seed)`` does.
    target_drop, search_steps, search_tolerance, mc_samples : the §8.4 rule (named as ``MeasureOptions``):
        stop when |drop − target| < tolerance, else drop > target lowers the upper end to σ and anything else
        raises the lower end to σ.
    magnitude_eps : None for N(0, σ²) noise on every parameter; ε for N(0, σ²w² + ε²) (§8.5).

    Returns
    -------
    float : σ′ in (0, 2].
    """
    work = copy.deepcopy(model).eval()
    originals = {name: p.detach().clone() for name, p in work.named_parameters()}
    seeds = torch.randint(0, 2 ** 62, (mc_samples,), generator=torch.Generator().manual_seed(seed)).tolist()
    n = len(x)
    with torch.no_grad():
        clean = int((work(x).argmax(-1) == y).sum())

    @torch.no_grad()
    def mean_drop(sigma: float) -> float:
        correct = 0
        for draw_seed in seeds:   # the same draws at every σ (common random numbers)
            g = torch.Generator().manual_seed(draw_seed)
            for name, p in work.named_parameters():
                w = originals[name]
                std = sigma if magnitude_eps is None else torch.sqrt(sigma ** 2 * w ** 2 + magnitude_eps ** 2)
                p.copy_(w + std * torch.randn(w.shape, generator=g, dtype=w.dtype).to(w.device))
            correct += int((work(x).argmax(-1) == y).sum())
        return (mc_samples * clean - correct) / (mc_samples * n)

    return _bisect(mean_drop, search_steps, target_drop, search_tolerance)


def _bisect(drop_at, steps: int, target: float, tolerance: float) -> float:
    """The port's bisection on [0, 2]: the first scale whose drop is within ``tolerance`` of ``target``, else the
    midpoint of the last bracket (measure-formulas §8.4)."""
    lo, hi = 0.0, 2.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        drop = drop_at(mid)
        if abs(drop - target) < tolerance:
            return mid
        if drop > target:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


def alpha_search_sequential(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, seed: int = 0,
                            target_drop: float = 0.1, search_steps: int = 15, search_tolerance: float = 0.01,
                            ascent_steps: int = 10, magnitude_eps: float | None = None) -> float:
    """α′ (worst-case box half-width) by the textbook search that ``measures.sharpness.alpha_search`` replaces.

    A deep copy of ``model`` whose parameters are overwritten in place; at every bisection step the whole ascent
    runs (a uniform start in the box |u| ≤ r, then ``ascent_steps`` projected sign-gradient steps of r/4 on the
    mean cross-entropy, the drop being the largest accuracy drop over all iterates), with no early abandon. The
    same start directions (``torch.Generator().manual_seed(seed)``, U[−1, 1] parameter by parameter) and the same
    bisection rule as the fast search, so both return the same α′: the fast one only stops an ascent once its
    drop already exceeds target + tolerance, which cannot change a decision.
    """
    work = copy.deepcopy(model).eval()
    originals = {name: p.detach().clone() for name, p in work.named_parameters()}
    g = torch.Generator().manual_seed(seed)
    start = {name: (2 * torch.rand(w.shape, generator=g, dtype=w.dtype) - 1).to(w.device)
             for name, w in originals.items()}
    n = len(x)
    with torch.no_grad():
        clean = int((work(x).argmax(-1) == y).sum())

    def worst_drop(alpha: float) -> float:
        radius = {name: torch.full_like(w, alpha) if magnitude_eps is None else alpha * w.abs() + magnitude_eps
                  for name, w in originals.items()}
        u = {name: radius[name] * start[name] for name in originals}
        worst = -math.inf
        for step in range(ascent_steps + 1):
            with torch.no_grad():
                for name, p in work.named_parameters():
                    p.copy_(originals[name] + u[name])
            params = [p for _, p in work.named_parameters()]
            for p in params:
                p.requires_grad_(True)
            logits = work(x)
            worst = max(worst, (clean - int((logits.argmax(-1) == y).sum())) / n)
            if step == ascent_steps:
                break
            grads = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, y), params)
            u = {name: torch.clamp(u[name] + radius[name] / 4 * gr.sign(), -radius[name], radius[name])
                 for name, gr in zip(originals, grads)}
        return worst

    return _bisect(worst_drop, search_steps, target_drop, search_tolerance)
