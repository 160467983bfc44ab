"""Path-norm (Jiang et al. eq. 44; /margin eq. 43; measure-formulas §8.1) and its CRATE path-norm forward.

For a bias-free ReLU network the squared ℓ2 path-norm Σ_paths Π_{e∈path} w_e² equals Σ_outputs f_{w∘w}(𝟙): with
non-negative weights and inputs ReLU is the identity, so the forward pass sums the path products
(``mlp_path_norm``). CRATE is not such a network, so ``path_norm_forward`` is a separate forward that mirrors
``zoo.models.CRATE`` with these written rules (pitfalls 1–6 of §8.1):

- every weight matrix, bias, LayerNorm gain/bias, cls token and position embedding is squared elementwise;
- every fixed constant on a path is squared: the ISTA step η → η², its threshold ηλ → (ηλ)², the output-map sign of
  crate-n (−1)² = +1, so crate-n and crate-c have the same path-norm;
- every subtraction becomes an addition, since each branch is a separate set of paths. ISTA, row form
  x + η(x D − x DᵀD) − ηλ, becomes x + η² x D^{∘2} + η² x (D^{∘2})ᵀ D^{∘2} + (ηλ)² (column form
  1·z + η²(Dᵀ)^{∘2} z + η²(Dᵀ)^{∘2} D^{∘2} z + (ηλ)²); the threshold is a bias: squared and added;
- ReLU is the identity (every quantity is non-negative);
- LayerNorm is the diagonal affine map diag(g²) x + b²: the data-dependent 1/σ and the mean subtraction are dropped
  (no principled path form exists; this keeps exactly LN's learned coefficients). Consequence: ``path-norm`` grows
  with the scale of every map that feeds a LayerNorm although the function ignores that scale (×10 on the patch
  embedding of a trained digits model moves its logits by ~3e-6 and its log path-norm from 1.68 to 2.30).
  ``layer_norm="normalized"`` (measure ``path-norm-normalized``) is the scale-invariant variant: LN first divides
  each token's path vector by its mean over features, the path analogue of LN's 1/σ² (path vectors hold squared
  coefficients, so a map scaled by c scales them by c²), then applies diag(g²) · + b²; an all-zero token stays
  zero. It is invariant to any positive rescaling of a map feeding a LayerNorm, as the function is, and keeps
  how the path mass is spread over features;
- attention is fixed to the uniform matrix A = 𝟙𝟙ᵀ/N over the N tokens (option (b) of pitfall 4), so
  A^{∘2} = 𝟙𝟙ᵀ/N². The softmax logits are not on any value path, so Q/K and the attention temperature drop out.
  Uniform attention keeps the token mixing through which the patches reach the cls token; the alternative
  ``tokens="self"`` (A = I, the analogue of the NLP port's length-1 sequences) drops it, and then no patch path
  reaches the logits;
- the cls token and position embedding are additive inputs, i.e. squared biases (added);
- patch extraction is a permutation of pixels (coefficient 1); dropout is off (eval);
- output maps: crate / crate-fix S (W^{∘2})ᵀ + b²; crate-c / crate-n S W_qkv^{∘2}; crate-t S (W_qkv^{∘2})ᵀ;
  crate-identity S.

The input is the all-ones image; the value is the sum of the logits computed from the cls token. Arithmetic is in
float64 and every intermediate is stored as (tensor with max 1) × exp(log scale), so deep or wide models cannot
overflow; the measure ``path-norm`` reports the natural log of the path-norm, which can exceed 1e308 in linear form.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from zoo.models import CRATE

from .context import MeasureContext
from .margin import log_margin_sq
from .registry import register_measure

__all__ = ["mlp_path_norm", "path_norm_forward"]

LAYER_NORM_RULES = ("affine", "normalized")


def mlp_path_norm(weights) -> float:
    """Squared ℓ2 path-norm Σ_paths Π w_e² of a bias-free ReLU MLP given its (out, in) weight matrices in order.

    Examples
    --------
    >>> mlp_path_norm([torch.tensor([[1., -2.]]), torch.tensor([[3.], [1.]])])  # paths: 1·9, 1·1, 4·9, 4·1
    50.0
    """
    x = torch.ones(weights[0].shape[1], dtype=torch.float64)
    for w in weights:
        x = x @ w.detach().to(torch.float64).square().T   # ReLU is the identity on non-negative inputs
    return float(x.sum())


@dataclass(frozen=True)
class _Scaled:
    """A non-negative tensor ``value * exp(log_scale)`` with max(value) = 1, or value = 0 and log_scale = −inf.

    Neither overflow nor underflow of the scale can happen: only ``value`` is ever multiplied by exp(Δ) with Δ ≤ 0.
    """

    value: torch.Tensor
    log_scale: float = 0.0

    @classmethod
    def of(cls, t: torch.Tensor, log_scale: float = 0.0) -> "_Scaled":
        top = float(t.max()) if t.numel() else 0.0
        if not math.isfinite(top):
            raise FloatingPointError(f"path-norm forward reached {top} inside one layer (float64 overflow)")
        # an all-zero tensor gets scale -inf so that adding it (a zero bias) cannot wipe out a tiny partner
        return cls(t / top, log_scale + math.log(top)) if top > 0 else cls(torch.zeros_like(t), float("-inf"))

    def map(self, fn) -> "_Scaled":
        """Apply a non-negative linear map (no bias) and renormalise."""
        return _Scaled.of(fn(self.value), self.log_scale)

    def plus(self, other: "_Scaled") -> "_Scaled":
        if other.log_scale == float("-inf"):
            return self
        if self.log_scale == float("-inf"):
            return other
        top = max(self.log_scale, other.log_scale)
        # exp(l - top) <= 1, so the sum of two max-1 tensors stays <= 2
        return _Scaled.of(self.value * math.exp(self.log_scale - top) + other.value * math.exp(other.log_scale - top),
                          top)

    def plus_bias(self, bias_sq: torch.Tensor) -> "_Scaled":
        return self.plus(_Scaled.of(bias_sq.expand_as(self.value).clone()))

    def log_total(self) -> float:
        total = float(self.value.sum())
        return self.log_scale + math.log(total) if total > 0 else float("-inf")   # -inf: every path has weight 0


def _sq(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().to(torch.float64).square()


def _linear(z: _Scaled, linear: nn.Linear) -> _Scaled:
    out = z.map(lambda v: v @ _sq(linear.weight).T)
    return out if linear.bias is None else out.plus_bias(_sq(linear.bias))


def _normalize_tokens(z: _Scaled) -> _Scaled:
    # v / mean_features(v) per token: the result no longer depends on z's scale, so the log scale restarts at 0
    mean = z.value.mean(dim=-1, keepdim=True)
    return _Scaled.of(torch.where(mean > 0, z.value / torch.where(mean > 0, mean, 1.0), 0.0))


def _layer_norm(z: _Scaled, norm: nn.LayerNorm, rule: str = "affine") -> _Scaled:
    # LN -> diag(g^2) x + b^2: the data-dependent mean subtraction and 1/sigma have no path form and are dropped
    # ("affine"), or 1/sigma^2 is replaced by the token's mean path mass ("normalized"; module docstring)
    if rule == "normalized":
        z = _normalize_tokens(z)
    out = z if norm.weight is None else z.map(lambda v: v * _sq(norm.weight))
    return out if norm.bias is None else out.plus_bias(_sq(norm.bias))


def _mssa(z: _Scaled, attn, tokens: str) -> _Scaled:
    w_qkv_sq = _sq(attn.qkv.weight)                                     # (K*p, d)
    w = z.map(lambda v: v @ w_qkv_sq.T)                                 # (N, K*p); the same A for every head
    n = w.value.shape[0]
    if tokens == "uniform":                                             # A^{o2} = 11^T / N^2
        s = w.map(lambda v: v.sum(dim=0, keepdim=True).expand_as(v) / n ** 2)
    else:                                                               # A = I
        s = w
    spec = attn.output_map.spec                                         # the variant's OUTPUT_MAPS entry
    if spec.kind == "learned":                                          # crate, crate-fix
        return _linear(s, attn.output_map.linear)
    if spec.kind == "tied":                                             # crate-c, crate-n (sign^2 = 1), crate-t
        sign_sq = float(spec.sign) ** 2
        if spec.transpose:
            return s.map(lambda v: sign_sq * (v @ w_qkv_sq.T))
        return s.map(lambda v: sign_sq * (v @ w_qkv_sq))
    return s                                                            # identity (OutputMap allows no other kind)


def _ista(z: _Scaled, ista) -> _Scaled:
    d_sq = _sq(ista.weight)
    eta, lambd = ista.config.ista_step, ista.config.ista_lambda
    eta_sq = float(eta) ** 2
    # x + eta(xD - xD^T D) - eta*lambda: three path sets (identity, D, D^T D) added, the threshold a squared bias
    out = z.map(lambda v: v + eta_sq * (v @ d_sq) + eta_sq * ((v @ d_sq.T) @ d_sq))
    return out.plus_bias(torch.tensor(float(eta * lambd) ** 2, dtype=torch.float64))


def path_norm_forward(model: CRATE, tokens: str = "uniform", layer_norm: str = "affine") -> float:
    """Natural log of CRATE's path-norm Σ_outputs f_{w∘w}(𝟙) under the rules of the module docstring.

    Parameters
    ----------
    model : CRATE
        Read only; its parameters are copied to float64 and squared, never modified.
    tokens : {"uniform", "self"}
        The fixed attention matrix: "uniform" A = 𝟙𝟙ᵀ/N (default; keeps token mixing) or "self" A = I (the
        length-1-sequence convention: only the cls token's own paths reach the logits).
    layer_norm : {"affine", "normalized"}
        LayerNorm rule: diag(g²) x + b² (default, grows with the scale of the maps feeding a LayerNorm) or the
        scale-invariant rule that first divides each token's path vector by its feature mean.

    Returns
    -------
    float
        log Σ_classes f_{w∘w}(𝟙)[class], from the cls token of one all-ones image.
    """
    if tokens not in ("uniform", "self"):
        raise ValueError(f"tokens must be 'uniform' or 'self', got {tokens!r}")
    if layer_norm not in LAYER_NORM_RULES:
        raise ValueError(f"layer_norm must be one of {', '.join(LAYER_NORM_RULES)}, got {layer_norm!r}")
    ln = layer_norm
    cfg = model.config
    tok = model.tokenizer
    with torch.no_grad():
        patch_dim = cfg.channels * cfg.patch_size ** 2
        x = _Scaled.of(torch.ones(cfg.num_patches, patch_dim, dtype=torch.float64))  # patches of 𝟙: a permutation
        x = _layer_norm(_linear(_layer_norm(x, tok.patch_norm, ln), tok.patch_embed), tok.embed_norm, ln)  # (n, d)
        cls_sq = _sq(tok.cls_token).reshape(1, cfg.dim)
        zero_row = torch.zeros(1, cfg.dim, dtype=torch.float64)
        z = _Scaled(torch.cat([zero_row, x.value]), x.log_scale).plus(
            _Scaled.of(torch.cat([cls_sq, torch.zeros_like(x.value)])))                   # (N, d): [cls; patches]
        z = z.plus_bias(_sq(tok.pos_embedding).reshape(-1, cfg.dim))
        for layer in model.layers:
            z_half = z.plus(_mssa(_layer_norm(z, layer.attn_norm, ln), layer.attn, tokens))
            z = _ista(_layer_norm(z_half, layer.ista_norm, ln), layer.ista)
        cls_out = _Scaled(z.value[:1], z.log_scale)
        logits = _linear(_layer_norm(cls_out, model.head_norm, ln), model.head)         # (1, classes)
        return logits.log_total()


@register_measure("path-norm", family="path-norm", needs_crate=True)
def path_norm(ctx: MeasureContext) -> float:
    """log of the ℓ2 path-norm Σ f_{w∘w}(𝟙) (Jiang eq. 44) via CRATE's path-norm forward; logged to avoid overflow."""
    return ctx.cached("pathnorm.log", lambda: path_norm_forward(ctx.model))


@register_measure("path-norm-over-margin", family="path-norm", needs_data=True, needs_crate=True)
def path_norm_over_margin(ctx: MeasureContext) -> float:
    """log path-norm − 2 log γ, the log of path-norm/γ² (Jiang eq. 43); undefined when γ ≤ 0."""
    return ctx.cached("pathnorm.log", lambda: path_norm_forward(ctx.model)) - log_margin_sq(ctx)


@register_measure("path-norm-normalized", family="path-norm", needs_crate=True)
def path_norm_normalized(ctx: MeasureContext) -> float:
    """log path-norm with the scale-invariant LayerNorm rule (each token's path vector divided by its feature mean)."""
    return path_norm_forward(ctx.model, layer_norm="normalized")
