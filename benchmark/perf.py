"""``srrbench perf``: each fast path against a plain reference implementation, in one process, on the same inputs.

Writes ``perf.csv`` (task, reference_s, fast_s, speedup, agree, detail) and ``perf_training.csv`` (achieved
training GFLOP/s, one model alone and an ensemble, against a large-matmul peak measured on this machine). Everything
runs on one torch thread, as each worker process of the zoo and measures stages does.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from zoo import TrainConfig, build_model, load_dataset, train_model
from zoo.allocator import keep_freed_memory
from zoo.store import atomic_write_text


def _timed(fn, repeat: int = 1):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def srr_per_sample_torch_loop(Z: torch.Tensor, U: torch.Tensor, eps_sq: float) -> np.ndarray:
    """Reference in the style of CRATE's vis_utils: one sample and one head at a time, torch.logdet of the
    N x N form, in float64."""
    Z, U = Z.double(), U.double()
    m, n, d = Z.shape
    out = np.empty(m)
    for i in range(m):
        z = Z[i]
        r = 0.5 * torch.logdet(torch.eye(n, dtype=z.dtype) + d / (n * eps_sq) * z @ z.T)
        rc = 0.0
        for j in range(U.shape[0]):
            zu = z @ U[j]
            rc = rc + 0.5 * torch.logdet(torch.eye(n, dtype=z.dtype) + U.shape[2] / (n * eps_sq) * zu @ zu.T)
        out[i] = float(rc - r)
    return out


def srr_per_sample_numpy_loop(Z: torch.Tensor, U: torch.Tensor, eps_sq: float) -> np.ndarray:
    """A stronger reference: the same loop with numpy slogdet on the smaller side (d x d, p x p)."""
    Z, U = Z.double().numpy(), U.double().numpy()
    m, n, d = Z.shape
    k, _, p = U.shape
    out = np.empty(m)
    for i in range(m):
        z = Z[i]
        r = 0.5 * np.linalg.slogdet(np.eye(d) + d / (n * eps_sq) * z.T @ z)[1]
        rc = sum(0.5 * np.linalg.slogdet(np.eye(p) + p / (n * eps_sq) * (z @ U[j]).T @ (z @ U[j]))[1]
                 for j in range(k))
        out[i] = rc - r
    return out


def perf_srr(quick: bool) -> list[dict]:
    """Both SRR coding rates over M samples at two scales: the default digits zoo's (N = 5 tokens, d = 64, 3
    layers) and a CIFAR-like one (N = 65, d = 64), where the per-matrix arithmetic outweighs the loop."""
    from measures.srr import coding_rate, coding_rate_subspaces
    g = torch.Generator().manual_seed(0)
    m = 64 if quick else 512
    rows = []
    for n, d, k, layers in ((5, 64, 4, 3), (17 if quick else 65, 64, 4, 1)):
        Z = torch.relu(torch.randn(layers, m, n, d, generator=g))
        U = torch.stack([torch.linalg.qr(torch.randn(d, d, generator=g))[0].T.reshape(k, d // k, d).transpose(1, 2)
                         for _ in range(layers)])
        fast_s, fast = _timed(lambda: np.stack([(coding_rate_subspaces(Z[l], U[l], 0.5) - coding_rate(Z[l], 0.5))
                                                .numpy() for l in range(layers)]), repeat=3)
        for label, reference in (("torch per-sample/per-head loop, N x N logdet (CRATE vis_utils style)",
                                  srr_per_sample_torch_loop),
                                 ("numpy per-sample loop, slogdet on the smaller side", srr_per_sample_numpy_loop)):
            ref_s, ref = _timed(lambda: np.stack([reference(Z[l], U[l], 0.5) for l in range(layers)]))
            rows.append({"task": f"srr coding rates ({layers} layer(s) x M={m} samples, N={n}, d={d}, K={k})",
                         "reference_s": ref_s, "fast_s": fast_s,
                         "agree": bool(np.allclose(ref, fast, rtol=1e-7, atol=1e-7)),
                         "detail": f"batched float64 Cholesky on the smaller Gram side vs {label}"})
    return rows


def perf_searches(quick: bool) -> list[dict]:
    """The σ′ and worst-case α′ searches on one trained digits CRATE, each against its textbook reference
    (``benchmark.reference``: a deep copy perturbed in place, every draw / ascent step evaluated); agree = the
    same σ′ / α′ (the fast searches only skip work whose outcome cannot change a bisection decision)."""
    from benchmark.reference import alpha_search_sequential, sigma_search_sequential
    from measures.pacbayes import sigma_search
    from measures.sharpness import alpha_search
    data = load_dataset("digits", n_train=600)
    torch.manual_seed(0)
    model = build_model("crate", image_size=8, patch_size=4, channels=1, num_classes=10, dim=32, depth=3, heads=4)
    train_model(model, data, TrainConfig(lr=4e-3, batch_size=64, max_epochs=5 if quick else 30))
    x, y = data.x_train[:128 if quick else 512], data.y_train[:128 if quick else 512]
    steps, draws, ascent = (5, 4, 3) if quick else (15, 10, 10)
    rows = []
    ref_s, ref = _timed(lambda: sigma_search_sequential(model, x, y, search_steps=steps, mc_samples=draws, seed=0))
    fast_s, fast = _timed(lambda: sigma_search(model, x, y, search_steps=steps, mc_samples=draws, seed=0))
    rows.append({"task": f"pac-bayes sigma search ({steps} bisection steps x {draws} draws, {len(x)} samples)",
                 "reference_s": ref_s, "fast_s": fast_s, "agree": bool(abs(ref - fast) <= 1e-6 * max(1.0, abs(ref))),
                 "detail": f"Monte-Carlo parameter sets in one stacked forward, early decisions vs one draw at a "
                           f"time (sigma' {fast:.4g} vs {ref:.4g})"})
    for label, eps in (("plain", None), ("magnitude-aware", 1e-5)):
        kw = dict(search_steps=steps, ascent_steps=ascent, seed=0, magnitude_eps=eps)
        ref_s, ref = _timed(lambda: alpha_search_sequential(model, x, y, **kw))
        fast_s, fast = _timed(lambda: alpha_search(model, x, y, **kw))
        rows.append({"task": f"sharpness alpha search, {label} box ({steps} bisection steps x {ascent} ascent "
                             f"steps, {len(x)} samples)",
                     "reference_s": ref_s, "fast_s": fast_s, "agree": bool(ref == fast),
                     "detail": f"ascent abandoned once its drop exceeds target + tolerance vs every ascent step "
                               f"on a deep copy (alpha' {fast:.4g} vs {ref:.4g})"})
    return rows


def perf_ensemble_training(quick: bool) -> list[dict]:
    """Ensemble training (``zoo.train``) against the plain one-model loop (``benchmark.reference.train_plain``), one
    run at a time, on groups of the default digits zoo (all 6 lr x dropout runs of a group, fixed epochs with no CE
    target so that both do the same work); plus the ensemble with groups of one, which must give the same bits."""
    from benchmark.profiles import resolve_profile
    from benchmark.reference import train_plain
    from zoo.train import train_ensemble
    from zoo.runner import cached_dataset, dataset_shape, init_model, plan_groups
    profile = resolve_profile("digits-small")   # the old default: the same work as the figures before it
    runs = profile.runs(*dataset_shape(profile.data, None))
    data = cached_dataset(profile.data, None)
    epochs = 1 if quick else 3
    # fixed epochs, no CE target and no extra checkpoints (the profile's checkpoint epochs lie beyond these few): the
    # same work for both loops
    warm = replace(runs[0].train, max_epochs=1, target_ce=0.0, checkpoint_epochs=())   # first-call costs go here
    train_plain(init_model(runs[0]), data, warm)
    train_ensemble([init_model(runs[0])], ["warm-up"], [warm], data)
    rows = []
    for group in plan_groups(runs, 8):
        first = group[0]
        if first.model.variant != "crate" or (quick and (first.model.dim, first.train.batch_size) != (32, 32)):
            continue
        cfgs = [replace(c.train, max_epochs=epochs, target_ce=0.0, checkpoint_epochs=()) for c in group]

        def one_at_a_time():
            return [train_plain(init_model(c), data, t) for c, t in zip(group, cfgs)]

        def ensemble(size):
            finals = {}
            for i in range(0, len(group), size):
                members = group[i:i + size]
                train_ensemble([init_model(c) for c in members], [c.run_id for c in members], cfgs[i:i + size],
                               data, on_finish=lambda e, m, w, i=i: finals.update({i + e: (m, w)}))
            return [finals[i] for i in range(len(group))]
        ref_s, ref = _timed(one_at_a_time)
        fast_s, fast = _timed(lambda: ensemble(len(group)))
        _, single = _timed(lambda: ensemble(1))
        close = all(math.isclose(r["train_loss"], f[0]["train_loss"], rel_tol=1e-3) for r, f in zip(ref, fast))
        same = all(torch.equal(a[1][k], b[1][k]) for a, b in zip(fast, single) for k in a[1])
        rows.append({"task": f"ensemble training (crate d={first.model.dim}, batch {first.train.batch_size}, "
                             f"{len(group)} runs x {epochs} epochs)",
                     "reference_s": ref_s, "fast_s": fast_s, "agree": bool(close and same),
                     "detail": "one stacked ensemble vs the plain loop (train_plain) one run at a time; agree = final "
                               "train CE within 1e-3 of one-at-a-time and weights bit-equal to groups of one"})
    return rows


def matmul_peak_gflops(size: int = 1024, repeat: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    seconds, _ = _timed(lambda: a @ b, repeat=repeat)
    return 2 * size ** 3 / seconds / 1e9


def training_gflops(quick: bool) -> list[dict]:
    """Achieved training GFLOP/s (forward + backward FLOPs counted by torch) of one model trained alone and of 6
    trained as one ensemble, against a large-matmul peak measured here at the same thread count."""
    from torch.utils.flop_counter import FlopCounterMode
    from zoo.train import train_ensemble
    data = load_dataset("digits", n_train=600)
    bs, members = 64, 6

    def new_model(seed=0):
        torch.manual_seed(seed)
        return build_model("crate", image_size=8, patch_size=4, channels=1, num_classes=10, dim=64, depth=3, heads=4)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(new_model()(data.x_train[:bs]), data.y_train[:bs]).backward()
    flops_per_step = counter.get_total_flops()
    cfg = TrainConfig(lr=2e-3, batch_size=bs, max_epochs=2 if quick else 10, target_ce=0.0)
    alone_s, metrics = _timed(lambda: train_model(new_model(), data, cfg))
    cfgs = [replace(cfg, seed=s) for s in range(members)]
    together_s, _ = _timed(lambda: train_ensemble([new_model(s) for s in range(members)],
                                                  [str(s) for s in range(members)], cfgs, data))
    peak = matmul_peak_gflops(512 if quick else 1024)
    rows = []
    for how, n_models, seconds in (("one model (train_model, a group of one)", 1, alone_s),
                                   (f"{members} models as one ensemble", members, together_s)):
        achieved = flops_per_step * n_models * metrics["steps"] / seconds / 1e9
        rows.append({"trainer": how, "model": f"crate dim 64 depth 3, 5 tokens, batch {bs}",
                     "threads": torch.get_num_threads(), "flops_per_step": flops_per_step, "steps": metrics["steps"],
                     "seconds": seconds, "achieved_gflops": achieved, "matmul_peak_gflops": peak,
                     "fraction_of_peak": achieved / peak})
    return rows


def run_perf(out: Path, quick: bool = False, log=print) -> pd.DataFrame:
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # as the zoo and measures stages run: one torch thread per worker process
    keep_freed_memory()        # as they do too; it speeds the reference and the fast paths alike
    try:
        rows = [*perf_ensemble_training(quick), *perf_srr(quick), *perf_searches(quick)]
        training = pd.DataFrame(training_gflops(quick))
    finally:
        torch.set_num_threads(threads)
    table = pd.DataFrame(rows)
    table["speedup"] = table["reference_s"] / table["fast_s"]
    table = table[["task", "reference_s", "fast_s", "speedup", "agree", "detail"]]
    atomic_write_text(out / "perf.csv", table.to_csv(index=False))
    atomic_write_text(out / "perf_training.csv", training.to_csv(index=False))
    for r in table.itertuples():
        log(f"{r.task}: reference {r.reference_s:.3f} s, fast {r.fast_s:.3f} s, x{r.speedup:.1f}, agree={r.agree}")
    for t in training.itertuples():
        log(f"training, {t.trainer}: {t.achieved_gflops:.2f} GFLOP/s achieved vs {t.matmul_peak_gflops:.1f} GFLOP/s "
            f"matmul peak ({100 * t.fraction_of_peak:.1f}%)")
    log(f"-> {out / 'perf.csv'}, {out / 'perf_training.csv'}")
    return table
