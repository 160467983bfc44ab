"""Sharpness measures: Jiang's worst-case α′ bounds (measure-formulas §8.6) and adaptive m-sharpness (§8.7).

Perturbation set: as in ``measures.pacbayes``, every parameter of ``named_parameters()`` (frozen ones included)
is perturbed, buffers never; the norms in the bounds use the weight-matrix vector (``ctx.weights()``), ω its
length, m = ``ctx.n_train``. The model is never modified: perturbed parameter dicts go through
``torch.func.functional_call`` in eval mode.

Worst-case α′ (Jiang "sharpness-*"). For the box |u_i| ≤ r_i, with r_i = α (plain) or α|w_i| + ε (magnitude-aware;
ε = ``options.sharpness_mag_eps``), the adversary is projected
sign-gradient ascent on the mean training cross-entropy of the whole fixed sample: a uniform random start inside
the box, then ``ascent_steps`` steps u ← clip(u + (r/4)⊙sign ∇_u CE, −r, r). The drop of a box is the largest
accuracy drop over the iterates (start, every step, final), as an attack keeps its best point. α′ is the largest α
whose drop ≤ target_drop, by the same bisection on [0, 2] as σ′. The start directions are drawn once per search
from ``ctx.generator(salt)`` and rescaled to every α (common random numbers). Accuracy comes free with each ascent
step's forward pass, so once the drop exceeds target + tolerance that α is abandoned: the bisection's decision is
then certain, and clearly-too-large boxes cost one or two passes. A search whose every α fails returns the
bisection floor 2/2^(search_steps+1) with a RuntimeWarning: with ε = 1e-3 the magnitude-aware box at α = 0
(|u_i| ≤ ε on every parameter) already costs a trained digits CRATE ~20% accuracy, hence ``sharpness_mag_eps``.

Bounds (the log term uses α′ where the memory-of-paper note writes log(m/σ): this search has no σ, and Jiang's
bounds take the log of the scale that was searched):
- sharpness-init      ‖w − w⁰‖²·log(2ω)/(4α′²) + log(m/α′) + 10
- sharpness-orig      ‖w‖²·log(2ω)/(4α′²) + log(m/α′) + 10
- sharpness-flatness  1/α′²
- sharpness-mag-init  ¼ Σ_i log[(ε² + (α′² + 4 log 2ω)‖w − w⁰‖²/ω) / (ε² + α′² w_i²)] + log(m/α′) + 10
- sharpness-mag-orig  the same with ‖w‖² in the numerator
  (denominator ε² + α′²w_i², the box's scale at coordinate i, not (w_i − w⁰_i): see ``measures.pacbayes``)
- sharpness-mag-flatness  1/α′²
The magnitude-aware bounds are recalled from Jiang et al. App. C (no port implements them) [M]; at fixed weights
they are decreasing in α′, which is what a ranking uses.

Adaptive sharpness (Andriushchenko et al. 2023; Kwon et al. 2021). c = |w| (adaptive, every parameter),
ρ = options.rho, batches B of size m_sharpness taken in order from the fixed sample (a single batch when the
sample is smaller; a trailing partial batch is dropped), L_B the mean cross-entropy. Default geometry ℓ2
(``options.adaptive_norm``): with the default ρ = 0.05 the
ℓ∞ ball moves every weight by 5% of itself, and the worst case inside it drives a trained digits CRATE to a
loss near 10 (saturated, so it cannot rank models), while the ℓ2 ball gives graded values.
- adaptive-sharpness-avg:   mean_B mean_j [L_B(w + δ_j) − L_B(w)], δ_j = ρ c⊙ξ_j with mc_samples draws per
  batch, ξ ∼ N(0, I) per coordinate (ℓ2) or ξ ∼ U[−1, 1] per coordinate (ℓ∞), not normalised: each weight
  moves by about ρ|w_i|, as Andriushchenko et al. draw it. (Normalising ξ over the whole vector, as version 1
  did, moved each weight by ρ|w_i|/√ω, 1/100 to 1/200 of that in the digits zoo (ω = 11k to 40k): the loss
  change was ~1e-6, below the rounding noise, and negative for a third of the default zoo.)
  For a quadratic loss the value is ½ Σ_i ρ² w_i² H_ii (times 1/3 for ℓ∞), tested. All draws of a batch go
  through one stacked forward (``pacbayes.batched_logits``).
- adaptive-sharpness-worst: mean_B max_{‖δ⊘c‖ ≤ ρ} L_B(w + δ) − L_B(w), by an APGD-lite of ``ascent_steps`` steps
  in v = δ⊘c from v = 0: steepest-ascent steps (normalised gradient for ℓ2, its sign for ℓ∞), initial step 2ρ,
  APGD's momentum 0.75, projection onto the ball, the step halved at APGD's checkpoints when fewer than 75% of
  the steps since the last checkpoint raised the loss or the best loss did not move (then restarting from the
  best point); the best loss over all iterates is kept. No random restarts, so it needs no seed.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .pacbayes import (batched_logits, bisect_largest, correct_count, eval_mode, model_buffers,
                       perturbable_parameters, warn_if_floor, weight_vector, weights_and_init)
from .registry import register_measure

ALPHA_SALT = 8_601        # ctx.generator salt of the plain α′ search
MAG_ALPHA_SALT = 8_701    # ... of the magnitude-aware one
ADAPTIVE_AVG_SALT = 8_801
ALPHA_KEY = "sharpness/alpha"
MAG_ALPHA_KEY = "sharpness/alpha-mag"
ADAPTIVE_NORM = "l2"      # geometry of the adaptive-sharpness ball: "l2" or "linf" (module docstring)


# ---------------------------------------------------------------------------------------------------------
# Worst-case α′ search (§8.6).

def box_radius(params: dict[str, torch.Tensor], alpha: float, magnitude_eps: float | None) -> dict:
    """r_i = α, or α|w_i| + ε for the magnitude-aware box."""
    if magnitude_eps is None:
        return {name: torch.full_like(w, alpha) for name, w in params.items()}
    return {name: alpha * w.abs() + magnitude_eps for name, w in params.items()}


def worst_case_drop(model: nn.Module, params: dict[str, torch.Tensor], radius: dict[str, torch.Tensor],
                    start: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, clean_correct: int, *,
                    steps: int, stop_above: float = math.inf) -> float:
    """Largest accuracy drop over the iterates of projected sign-gradient ascent in the box |u| ≤ radius.

    ``start`` holds directions in [−1, 1] (u₀ = radius⊙start). Returns as soon as the drop exceeds ``stop_above``.
    """
    buffers = model_buffers(model)
    n = len(x)
    u = {name: radius[name] * start[name] for name in params}
    best = -math.inf
    for step in range(steps + 1):
        last = step == steps
        leaves = {name: (w + u[name]).requires_grad_(not last) for name, w in params.items()}
        with torch.set_grad_enabled(not last):
            logits = functional_call(model, (leaves, buffers), (x,))                    # (B, classes)
            best = max(best, (clean_correct - int((logits.argmax(-1) == y).sum())) / n)
            if best > stop_above or last:
                return best
            grads = torch.autograd.grad(F.cross_entropy(logits, y), list(leaves.values()))
        u = {name: torch.maximum(torch.minimum(u[name] + radius[name] / 4 * g.sign(), radius[name]),
                                 -radius[name])
             for (name, g) in zip(leaves, grads)}
    return best


def alpha_search(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, seed: int, target_drop: float = 0.1,
                 search_steps: int = 15, search_tolerance: float = 0.01, ascent_steps: int = 10,
                 magnitude_eps: float | None = None) -> float:
    """α′: the largest box half-width whose worst-case accuracy drop is ≤ target_drop (module docstring)."""
    params = perturbable_parameters(model)
    g = torch.Generator().manual_seed(seed)
    start = {name: (2 * torch.rand(w.shape, generator=g, dtype=w.dtype) - 1).to(w.device)
             for name, w in params.items()}
    with eval_mode(model):
        clean = correct_count(model, params, x, y)
        return bisect_largest(
            lambda a: worst_case_drop(model, params, box_radius(params, a, magnitude_eps), start, x, y, clean,
                                      steps=ascent_steps, stop_above=target_drop + search_tolerance),
            target=target_drop, tolerance=search_tolerance, steps=search_steps)


def box_eps(ctx) -> float:
    """ε of the magnitude-aware box (options.sharpness_mag_eps)."""
    return ctx.options.sharpness_mag_eps


def _search(ctx, magnitude: bool) -> float:
    opts = ctx.options
    salt = MAG_ALPHA_SALT if magnitude else ALPHA_SALT
    alpha = alpha_search(ctx.model, ctx.x, ctx.y, seed=ctx.generator(salt).initial_seed(),
                         target_drop=opts.target_drop, search_steps=opts.search_steps,
                         search_tolerance=opts.search_tolerance, ascent_steps=opts.ascent_steps,
                         magnitude_eps=box_eps(ctx) if magnitude else None)
    return warn_if_floor(alpha, opts.search_steps, "magnitude-aware α′" if magnitude else "α′")


def alpha_prime(ctx) -> float:
    """α′ of the plain box search, computed once per context."""
    return ctx.cached(ALPHA_KEY, lambda: _search(ctx, magnitude=False))


def mag_alpha_prime(ctx) -> float:
    """α′ of the magnitude-aware box search, computed once per context."""
    return ctx.cached(MAG_ALPHA_KEY, lambda: _search(ctx, magnitude=True))


def sharpness_bound(norm_sq: float, alpha: float, omega: int, m: int) -> float:
    """‖·‖²·log(2ω)/(4α²) + log(m/α) + 10."""
    return norm_sq * math.log(2 * omega) / (4 * alpha ** 2) + math.log(m / alpha) + 10


def sharpness_mag_bound(norm_sq: float, w: torch.Tensor, alpha: float, eps: float, m: int) -> float:
    """¼ Σ_i log[(ε² + (α² + 4 log 2ω)‖·‖²/ω)/(ε² + α² w_i²)] + log(m/α) + 10 (``norm_sq``: ‖w − w⁰‖² or ‖w‖²)."""
    omega = w.numel()
    numerator = eps ** 2 + (alpha ** 2 + 4 * math.log(2 * omega)) * norm_sq / omega
    denominator = eps ** 2 + alpha ** 2 * w.double() ** 2
    return 0.25 * float(torch.log(numerator / denominator).sum()) + math.log(m / alpha) + 10


@register_measure("sharpness-init", family="sharpness", needs_data=True, needs_init=True)
def sharpness_init(ctx) -> float:
    """‖w − w⁰‖²·log(2ω)/(4α′²) + log(m/α′) + 10, α′ the largest box whose worst case costs ≤ target_drop."""
    w, w0 = weights_and_init(ctx)
    return sharpness_bound(float(((w - w0) ** 2).sum()), alpha_prime(ctx), w.numel(), ctx.n_train)


@register_measure("sharpness-orig", family="sharpness", needs_data=True)
def sharpness_orig(ctx) -> float:
    """‖w‖²·log(2ω)/(4α′²) + log(m/α′) + 10 with the worst-case box half-width α′."""
    w = weight_vector(ctx.weights())
    return sharpness_bound(float((w ** 2).sum()), alpha_prime(ctx), w.numel(), ctx.n_train)


@register_measure("sharpness-flatness", family="sharpness", needs_data=True)
def sharpness_flatness(ctx) -> float:
    """1/α′² for the worst-case box half-width α′."""
    return 1.0 / alpha_prime(ctx) ** 2


@register_measure("sharpness-mag-init", family="sharpness", needs_data=True, needs_init=True, version=2)
def sharpness_mag_init(ctx) -> float:
    """Magnitude-aware worst-case sharpness bound around w⁰, box |u_i| ≤ α′|w_i| + ε."""
    w, w0 = weights_and_init(ctx)
    return sharpness_mag_bound(float(((w - w0) ** 2).sum()), w, mag_alpha_prime(ctx), box_eps(ctx), ctx.n_train)


@register_measure("sharpness-mag-orig", family="sharpness", needs_data=True)
def sharpness_mag_orig(ctx) -> float:
    """Magnitude-aware worst-case sharpness bound around the origin, box |u_i| ≤ α′|w_i| + ε."""
    w = weight_vector(ctx.weights())
    return sharpness_mag_bound(float((w ** 2).sum()), w, mag_alpha_prime(ctx), box_eps(ctx), ctx.n_train)


@register_measure("sharpness-mag-flatness", family="sharpness", needs_data=True)
def sharpness_mag_flatness(ctx) -> float:
    """1/α′² for the magnitude-aware box |u_i| ≤ α′|w_i| + ε."""
    return 1.0 / mag_alpha_prime(ctx) ** 2


# ---------------------------------------------------------------------------------------------------------
# Adaptive average- and worst-case m-sharpness (§8.7).

def sample_batches(x: torch.Tensor, y: torch.Tensor, m: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive batches of size m (a trailing partial batch is dropped; one batch if len(x) < m)."""
    if len(x) <= m:
        return [(x, y)]
    return [(x[i:i + m], y[i:i + m]) for i in range(0, len(x) - m + 1, m)]


def _adaptive_noise(shape_like: dict[str, torch.Tensor], n: int, norm: str, g: torch.Generator) -> dict:
    """n draws of ξ per coordinate: N(0, 1) (ℓ2) or U[−1, 1] (ℓ∞), unnormalised (module docstring)."""
    draw = torch.randn if norm == "l2" else (lambda *a, **k: 2 * torch.rand(*a, **k) - 1)
    # drawn on the CPU so that a seed means the same noise on every device
    return {name: draw((n, *w.shape), generator=g, dtype=w.dtype).to(w.device) for name, w in shape_like.items()}


def _loss(model, params, buffers, x, y) -> torch.Tensor:
    return F.cross_entropy(functional_call(model, (params, buffers), (x,)), y)


def adaptive_sharpness_avg(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, rho: float, batch_size: int,
                           draws: int, seed: int, norm: str = ADAPTIVE_NORM) -> float:
    """mean over batches of E_δ[L_B(w + δ) − L_B(w)], δ = ρ|w|⊙ξ, ``draws`` draws per batch in one stacked pass."""
    params, buffers = perturbable_parameters(model), model_buffers(model)
    scale = {name: rho * w.abs() for name, w in params.items()}
    g = torch.Generator().manual_seed(seed)
    values = []
    with eval_mode(model), torch.no_grad():
        for xb, yb in sample_batches(x, y, batch_size):
            xi = _adaptive_noise(params, draws, norm, g)
            batched = {name: w + scale[name] * xi[name] for name, w in params.items()}
            logits = batched_logits(model, batched, xb)                                     # (draws, B, classes)
            perturbed = F.cross_entropy(logits.flatten(0, 1), yb.repeat(draws), reduction="none").view(draws, -1)
            values.append(float(perturbed.mean(1).mean()) - float(_loss(model, params, buffers, xb, yb)))
    return sum(values) / len(values)


_APGD_ALPHA = 0.75  # momentum of APGD (Croce & Hein 2020)


def _apgd_checkpoints(steps: int) -> set[int]:
    """APGD's step-size checkpoints p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return {math.ceil(q * steps) for q in p[1:] if 0 < math.ceil(q * steps) < steps}


def _worst_batch(model, params, buffers, c, xb, yb, rho: float, steps: int, norm: str) -> float:
    """max over ‖v‖ ≤ ρ of L_B(w + c⊙v) − L_B(w), APGD-lite in v (module docstring)."""
    def project(v):
        if norm == "linf":
            return {k: t.clamp(-rho, rho) for k, t in v.items()}
        length = torch.sqrt(sum((t ** 2).sum() for t in v.values()))
        return {k: t * min(1.0, rho / max(float(length), 1e-30)) for k, t in v.items()}

    def ascent_direction(grads):
        grads = {k: c[k] * g for k, g in grads.items()}                      # chain rule through δ = c⊙v
        if norm == "linf":
            return {k: g.sign() for k, g in grads.items()}
        length = torch.sqrt(sum((g ** 2).sum() for g in grads.values()))
        return {k: g / max(float(length), 1e-30) for k, g in grads.items()}

    def loss_and_grad(v):
        leaves = {k: (w + c[k] * v[k]).requires_grad_() for k, w in params.items()}
        loss = _loss(model, leaves, buffers, xb, yb)
        grads = torch.autograd.grad(loss, list(leaves.values()))
        return float(loss.detach()), dict(zip(leaves, grads))

    with torch.no_grad():
        clean = float(_loss(model, params, buffers, xb, yb))
    checkpoints = _apgd_checkpoints(steps)
    eta = 2 * rho
    v = {k: torch.zeros_like(w) for k, w in params.items()}
    loss, grad = loss_and_grad(v)
    best_loss, best_v, best_grad = loss, v, grad
    v_prev, increases, since, best_at_check, halved = v, 0, 0, best_loss, False
    for step in range(steps):
        z = project({k: v[k] + eta * d for k, d in ascent_direction(grad).items()})
        momentum = _APGD_ALPHA if step > 0 else 1.0
        v_new = project({k: v[k] + momentum * (z[k] - v[k]) + (1 - momentum) * (v[k] - v_prev[k]) for k in v})
        v_prev, v = v, v_new
        new_loss, grad = loss_and_grad(v)
        increases += new_loss > loss
        since += 1
        loss = new_loss
        if loss > best_loss:
            best_loss, best_v, best_grad = loss, v, grad
        if step + 1 in checkpoints:
            if increases < 0.75 * since or (not halved and best_loss <= best_at_check):
                eta, halved = eta / 2, True
                v, v_prev, grad, loss = best_v, best_v, best_grad, best_loss
            else:
                halved = False
            increases, since, best_at_check = 0, 0, best_loss
    return best_loss - clean


def adaptive_sharpness_worst(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, rho: float,
                             batch_size: int, steps: int, norm: str = ADAPTIVE_NORM) -> float:
    """mean over batches of max_{‖δ⊘|w|‖ ≤ ρ} L_B(w + δ) − L_B(w), by APGD-lite (module docstring)."""
    params, buffers = perturbable_parameters(model), model_buffers(model)
    c = {name: w.abs() for name, w in params.items()}
    with eval_mode(model):
        values = [_worst_batch(model, params, buffers, c, xb, yb, rho, steps, norm)
                  for xb, yb in sample_batches(x, y, batch_size)]
    return sum(values) / len(values)


def adaptive_norm(ctx) -> str:
    """Ball geometry (options.adaptive_norm, validated by MeasureOptions)."""
    return ctx.options.adaptive_norm


@register_measure("adaptive-sharpness-avg", family="sharpness", needs_data=True, version=2)
def adaptive_sharpness_avg_measure(ctx) -> float:
    """Adaptive average-case m-sharpness E_B E_ξ[L_B(w + ρ|w|⊙ξ) − L_B(w)], ξ ∼ N(0, I) (Andriushchenko et al.)."""
    o = ctx.options
    return adaptive_sharpness_avg(ctx.model, ctx.x, ctx.y, rho=o.rho, batch_size=o.m_sharpness,
                                  draws=o.mc_samples, seed=ctx.generator(ADAPTIVE_AVG_SALT).initial_seed(),
                                  norm=adaptive_norm(ctx))


@register_measure("adaptive-sharpness-worst", family="sharpness", needs_data=True)
def adaptive_sharpness_worst_measure(ctx) -> float:
    """Adaptive worst-case m-sharpness E_B max_{‖δ⊘|w|‖₂ ≤ ρ} L_B(w + δ) − L_B(w), by APGD-lite."""
    o = ctx.options
    return adaptive_sharpness_worst(ctx.model, ctx.x, ctx.y, rho=o.rho, batch_size=o.m_sharpness,
                                    steps=o.ascent_steps, norm=adaptive_norm(ctx))
