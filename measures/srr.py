"""Sparse Rate Reduction (SRR) as a complexity measure of a trained CRATE (paper-notes §1, §2.4).

Row convention: one sample's tokens are the rows of Z (N x d); U_k (d x p) is a subspace basis, so U_k^T z is Z U_k.

- Coding rate, CRATE eq. (7):            R(Z)      = 1/2 logdet(I + d/(N eps^2) Z^T Z)
- Subspace coding rate, CRATE eq. (8):   R^c(Z; U) = sum_k 1/2 logdet(I + p/(N eps^2) (Z U_k)^T (Z U_k))
- Rate reduction:                        dR        = R - R^c
- Layer measure (paper-notes §2.4):      SRR_l     = ||Z||_0/(N d) + R^c(Z; U^l) - R(Z),  Z = Z^{l+1} (ISTA output),
  i.e. the negative of the SRR objective (CRATE eq. 1) with lambda = 1, averaged over M training samples, so a
  larger value reads as "more complex". The scalar ``srr`` aggregates layers by ``MeasureOptions.aggregate``.
  The sparsity term is the fraction of non-zero entries by default (``l0="per-entry"``, the form CRATE reports and
  paper-notes §2.4 recommend); the raw count ``l0="raw"`` is of order N d and made SRR mostly a count of non-zeros.

Choices the paper leaves open (eps^2, l0 scaling, aggregation, token normalisation) come from ``ctx.options``.
"Nonzero" means exactly ``!= 0``: Z^{l+1} is a ReLU output, so inactive entries are exact zeros, as in CRATE's
``vis_utils`` sparsity hook; no threshold is applied.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .context import MeasureContext
from .registry import register_measure

__all__ = ["coding_rate", "coding_rate_subspaces", "srr_components", "srr_per_layer", "aggregate_layers",
           "srr_loss"]


def _logdet_spd(a):
    # I + cG has every eigenvalue >= 1, so Cholesky never fails and logdet = 2 sum log diag(L) is exact and stable.
    if isinstance(a, np.ndarray):
        return 2.0 * np.log(np.diagonal(np.linalg.cholesky(a), axis1=-2, axis2=-1)).sum(-1)
    chol = torch.linalg.cholesky(a)   # differentiable, which srr_loss needs
    return 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)


def _as_float64(*tensors):
    """float64 arrays for the arithmetic: numpy when no gradient is needed on the CPU (its batched matmul and
    Cholesky gufuncs are ~3x faster than torch's on stacks of small matrices, measured by `srrbench perf`),
    torch tensors otherwise so that srr_loss stays differentiable."""
    need_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if not need_grad and all(t.device.type == "cpu" for t in tensors):
        return [t.detach().numpy().astype(np.float64) for t in tensors]
    return [t.to(torch.float64) for t in tensors]


def _to_tensor(x):
    return torch.from_numpy(np.asarray(x)) if isinstance(x, (np.ndarray, np.floating)) else x


def _gram_smaller(z):
    # Sylvester: det(I_N + c Z Z^T) = det(I_d + c Z^T Z); the smaller side costs min(N, d)^3 instead of max^3.
    n, d = z.shape[-2:]
    zt = z.swapaxes(-1, -2)
    return z @ zt if n <= d else zt @ z


def _check_eps(eps_sq: float) -> None:
    if not eps_sq > 0:
        raise ValueError(f"eps_sq must be positive, got {eps_sq!r}")


def coding_rate(Z: torch.Tensor, eps_sq: float) -> torch.Tensor:
    """Coding rate R(Z) = 1/2 logdet(I + d/(N eps^2) Z^T Z) of each sample's token set (CRATE eq. 7).

    Parameters
    ----------
    Z : Tensor (M, N, d) or (N, d)
        Tokens as rows.
    eps_sq : float
        Quantisation precision eps^2.

    Returns
    -------
    Tensor (M,) float64, or a 0-dim tensor for a single (N, d) matrix. Differentiable in Z.

    Examples
    --------
    >>> coding_rate(torch.zeros(3, 5, 4), 0.5)
    tensor([0., 0., 0.], dtype=torch.float64)
    """
    _check_eps(eps_sq)
    if Z.ndim not in (2, 3):
        raise ValueError(f"Z must have shape (M, N, d) or (N, d), got {tuple(Z.shape)}")
    single = Z.ndim == 2
    # float64: the logdet sums log(1 + c sigma^2) over up to min(N, d) terms and SRR subtracts two such sums of
    # similar size (R^c - R); float32 Gram matrices lose the digits that separate models.
    (z,) = _as_float64(Z[None] if single else Z)
    n, d = z.shape[-2:]
    gram = _gram_smaller(z)                                                   # (M, m, m), m = min(N, d)
    r = 0.5 * _logdet_spd(_plus_identity(gram, d / (n * eps_sq)))           # (M,)
    r = _to_tensor(r)
    return r[0] if single else r


def coding_rate_subspaces(Z: torch.Tensor, U: torch.Tensor, eps_sq: float) -> torch.Tensor:
    """Subspace coding rate R^c(Z; U) = sum_k 1/2 logdet(I + p/(N eps^2) (Z U_k)^T (Z U_k)) (CRATE eq. 8).

    The scale uses p, the subspace dimension, not d. U need not be orthonormal (CRATE's learned qkv is not).

    Parameters
    ----------
    Z : Tensor (M, N, d) or (N, d)
    U : Tensor (K, d, p)
        Subspace bases U_k, e.g. ``model.subspaces()[layer]``.
    eps_sq : float

    Returns
    -------
    Tensor (M,) float64, or a 0-dim tensor for a single (N, d) matrix. Differentiable in Z and U.
    """
    _check_eps(eps_sq)
    if Z.ndim not in (2, 3):
        raise ValueError(f"Z must have shape (M, N, d) or (N, d), got {tuple(Z.shape)}")
    if U.ndim != 3 or U.shape[1] != Z.shape[-1]:
        raise ValueError(f"U must have shape (K, d={Z.shape[-1]}, p), got {tuple(U.shape)}")
    single = Z.ndim == 2
    z, u = _as_float64(Z[None] if single else Z, U)
    n, p = z.shape[-2], u.shape[-1]
    proj = z[:, None] @ u[None]                                               # (M, K, N, p) = (U_k^T Z)^T
    gram = _gram_smaller(proj)                                                # (M, K, m, m), m = min(N, p)
    rc = _to_tensor(0.5 * _logdet_spd(_plus_identity(gram, p / (n * eps_sq))).sum(-1))   # (M,)
    return rc[0] if single else rc


def _plus_identity(gram, scale: float):
    """I + scale * gram for a stack of square matrices (numpy or torch)."""
    m = gram.shape[-1]
    eye = np.eye(m) if isinstance(gram, np.ndarray) else torch.eye(m, dtype=gram.dtype, device=gram.device)
    return eye + scale * gram


def _sparsity(Z: torch.Tensor, l0: str) -> torch.Tensor:
    """Per-sample sparsity term (M,) float64 under the ``l0`` option."""
    n, d = Z.shape[-2:]
    if l0 == "l1":
        return Z.to(torch.float64).abs().sum(dim=(-2, -1))
    count = (Z != 0).sum(dim=(-2, -1)).to(torch.float64)   # exact zeros: Z is a ReLU output (module docstring)
    if l0 == "raw":
        return count
    if l0 == "per-token":
        return count / n
    if l0 == "per-entry":
        return count / (n * d)
    raise ValueError(f"l0 option {l0!r}; allowed: raw, per-token, per-entry, l1")


def srr_components(Z: torch.Tensor, U: torch.Tensor, eps_sq: float, l0: str = "per-entry",
                   normalize_tokens: bool = False) -> dict[str, torch.Tensor]:
    """Per-sample ``sparsity``, ``rc``, ``r`` and ``srr = sparsity + rc - r`` (each (M,) float64) at one layer.

    ``normalize_tokens`` unit-normalises each token row before the coding rates only (an all-zero token stays
    zero); the sparsity term always sees Z as it is.
    """
    if Z.ndim != 3:
        raise ValueError(f"Z must have shape (M, N, d), got {tuple(Z.shape)}")
    sparsity = _sparsity(Z, l0)
    zc = F.normalize(Z.to(torch.float64), dim=-1) if normalize_tokens else Z
    rc = coding_rate_subspaces(zc, U, eps_sq)
    r = coding_rate(zc, eps_sq)
    return {"srr": sparsity + rc - r, "sparsity": sparsity, "rc": rc, "r": r}


_SAMPLE_CHUNK = 128


def srr_per_layer(ctx: MeasureContext) -> dict[str, np.ndarray]:
    """Layer-wise ``srr``, ``sparsity``, ``rc``, ``r`` (each shape (L,)), averaged over the M samples of ``ctx``.

    Evaluated at Z = Z^{l+1} (ISTA output) with U^l from ``model.subspaces()``; options from ``ctx.options``.
    Computed once per context and option set and shared by every SRR measure.
    """
    opts = ctx.options
    key = f"srr_per_layer(eps_sq={opts.eps_sq!r}, l0={opts.l0}, normalize_tokens={opts.normalize_tokens})"

    def compute() -> dict[str, np.ndarray]:
        _, feats = ctx.features()
        names = ("srr", "sparsity", "rc", "r")
        curves = {name: [] for name in names}
        with torch.no_grad():
            subspaces = ctx.model.subspaces().detach()                        # (L, K, d, p)
            for layer, f in enumerate(feats):
                z = f["Z_out"]                                                # (M, N, d)
                # Chunks over samples bound the float64 copies (M x K x N x p) at paper scale (N=197, d=384).
                parts = [srr_components(chunk, subspaces[layer], opts.eps_sq, opts.l0, opts.normalize_tokens)
                         for chunk in z.split(_SAMPLE_CHUNK)]
                for name in names:
                    curves[name].append(torch.cat([part[name] for part in parts]).mean().item())
        return {name: np.array(values) for name, values in curves.items()}

    return ctx.cached(key, compute)


def aggregate_layers(values: np.ndarray, how: str) -> float:
    """One scalar from a per-layer curve: ``mean``, ``last`` or ``sum``."""
    if how == "mean":
        return float(np.mean(values))
    if how == "last":
        return float(values[-1])
    if how == "sum":
        return float(np.sum(values))
    raise ValueError(f"aggregate option {how!r}; allowed: mean, last, sum")


# ---------------------------------------------------------------------------------------------------------
# Registered scalar measures. All share the cached srr_per_layer computation.

@register_measure("srr", family="srr", needs_data=True, needs_crate=True, higher_is_complex=True)
def srr(ctx: MeasureContext) -> float:
    """Sparse rate reduction l0(Z) + R^c - R (l0 per options.l0) at each ISTA output, aggregated over layers."""
    return aggregate_layers(srr_per_layer(ctx)["srr"], ctx.options.aggregate)


@register_measure("srr-last", family="srr", needs_data=True, needs_crate=True, higher_is_complex=True)
def srr_last(ctx: MeasureContext) -> float:
    """Sparse rate reduction l0(Z) + R^c - R (l0 per options.l0) at the last layer only."""
    return float(srr_per_layer(ctx)["srr"][-1])


@register_measure("sparsity", family="srr", needs_data=True, needs_crate=True, higher_is_complex=True)
def sparsity(ctx: MeasureContext) -> float:
    """SRR's sparsity term ||Z||_0 (scaled per options.l0) at each ISTA output, aggregated over layers."""
    return aggregate_layers(srr_per_layer(ctx)["sparsity"], ctx.options.aggregate)


@register_measure("rc", family="srr", needs_data=True, needs_crate=True, higher_is_complex=True)
def rc(ctx: MeasureContext) -> float:
    """SRR's subspace coding rate R^c(Z; U) at each ISTA output, aggregated over layers."""
    return aggregate_layers(srr_per_layer(ctx)["rc"], ctx.options.aggregate)


@register_measure("r", family="srr", needs_data=True, needs_crate=True, higher_is_complex=True)
def r(ctx: MeasureContext) -> float:
    """SRR's coding rate R(Z) at each ISTA output, aggregated over layers."""
    return aggregate_layers(srr_per_layer(ctx)["r"], ctx.options.aggregate)


# A larger dR is the direction the SRR objective maximises, so it is recorded as "higher = less complex".
@register_measure("rate-reduction", family="srr", needs_data=True, needs_crate=True, higher_is_complex=False)
def rate_reduction(ctx: MeasureContext) -> float:
    """Rate reduction dR = R - R^c at each ISTA output, aggregated over layers."""
    layers = srr_per_layer(ctx)
    return aggregate_layers(layers["r"] - layers["rc"], ctx.options.aggregate)


# ---------------------------------------------------------------------------------------------------------
# SRR as a training regulariser (the paper's experiment 4): l1 in place of l0, differentiable.

def srr_loss(features: Sequence, subspaces: torch.Tensor, eps_sq: float, l1_weight: float = 1.0,
             layers: int | Sequence[int] | None = None, normalize_tokens: bool = False) -> torch.Tensor:
    """Differentiable SRR: mean over layers of the batch mean of  l1_weight * mean|Z| + R^c(Z; U^l) - R(Z).

    The sparsity term is the per-entry l1 average ||Z||_1 / (N d), so ``l1_weight`` does not grow with the token
    count or the width; ``l1_weight = N * d`` gives the raw ||Z||_1 of the ``srr`` measure with ``l0="l1"``
    (and, with all layers, the same value as that measure with ``aggregate="mean"``).

    Parameters
    ----------
    features : sequence of per-layer dicts with ``"Z_out"`` (as from ``model(x, return_features=True)``) or of
        (B, N, d) tensors; keep them attached to the graph.
    subspaces : Tensor (L, K, d, p), ``model.subspaces()`` (not detached, so gradients reach W_qkv).
    eps_sq : float
    l1_weight : float, lambda of the l1 term.
    layers : None (all layers), one layer index, or a sequence of indices; the loss averages over them.
    normalize_tokens : unit-normalise token rows before the coding rates, as the measure option.

    Returns
    -------
    0-dim tensor in the features' dtype (computed in float64), differentiable in the features and subspaces.
    """
    zs = [f["Z_out"] if isinstance(f, dict) else f for f in features]
    if len(zs) != subspaces.shape[0]:
        raise ValueError(f"{len(zs)} feature layers but {subspaces.shape[0]} subspace layers")
    if layers is None:
        chosen = list(range(len(zs)))
    elif isinstance(layers, int):
        chosen = [layers]
    else:
        chosen = list(layers)
    if not chosen or any(not -len(zs) <= i < len(zs) for i in chosen):
        raise ValueError(f"layers {layers!r} must be layer indices in [-{len(zs)}, {len(zs)})")
    terms = []
    for i in chosen:
        z = zs[i]
        zc = F.normalize(z.to(torch.float64), dim=-1) if normalize_tokens else z
        per_sample = (l1_weight * z.to(torch.float64).abs().mean(dim=(-2, -1))
                      + coding_rate_subspaces(zc, subspaces[i], eps_sq) - coding_rate(zc, eps_sq))  # (B,)
        terms.append(per_sample.mean())
    return torch.stack(terms).mean().to(zs[0].dtype)
