"""CRATE white-box transformers and the output-map variants studied by Hu, Zou & Xu (2024).

Read top to bottom like the paper: tokenizer, MSSA (with the output map that the variants change),
ISTA, layer, model. Row convention throughout: tokens are rows and ``Linear`` computes ``x @ W.T``, so the
qkv weight ``W_qkv`` of shape (K*p, d) is ``U^T = [U_1^T; ...; U_K^T]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

VARIANTS = ("crate", "crate-c", "crate-n", "crate-t", "crate-fix", "crate-identity")
MAIN_VARIANTS = ("crate-c", "crate-n", "crate-t", "crate")
# Variants whose output map sends the K*p head outputs straight back into R^d (no d x Kp matrix of their own).
NEEDS_SQUARE_HEADS = ("crate-t", "crate-identity")


@dataclass(frozen=True)
class ModelConfig:
    variant: str = "crate"
    image_size: int = 8          # input side in pixels (square images)
    patch_size: int = 2          # patch side; image_size must be a multiple of it
    channels: int = 1
    num_classes: int = 10
    dim: int = 32                # d, token width
    depth: int = 4               # L, number of MSSA+ISTA layers
    heads: int = 4               # K, number of subspaces
    dim_head: int | None = None  # p; None means d / K so that K*p = d, as in CRATE
    dropout: float = 0.0         # attention, output-map and embedding dropout (one knob, like the zoo axis)
    ista_step: float = 0.1       # eta of the ISTA step; CRATE's hard-coded value
    ista_lambda: float = 0.1     # lambda of the ISTA soft threshold; CRATE's hard-coded value
    temperature: float | None = None  # attention logits scale; None means 1/sqrt(p) as in CRATE's code

    @property
    def head_dim(self) -> int:
        return self.dim_head if self.dim_head is not None else self.dim // self.heads

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def validate(self) -> "ModelConfig":
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; allowed: {', '.join(VARIANTS)}")
        for name in ("image_size", "patch_size", "channels", "num_classes", "dim", "depth", "heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.dim_head is None and self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}; set dim_head explicitly")
        if self.dim_head is not None and (not isinstance(self.dim_head, int) or self.dim_head <= 0):
            raise ValueError(f"model dim_head must be a positive integer, got {self.dim_head!r}")
        if self.variant in NEEDS_SQUARE_HEADS and self.heads * self.head_dim != self.dim:
            raise ValueError(
                f"variant {self.variant!r} maps the heads back with W_qkv^T or the identity, so it needs "
                f"heads*dim_head = dim; got {self.heads}*{self.head_dim} = {self.heads * self.head_dim} != {self.dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        for name in ("ista_step", "ista_lambda"):
            if not 0.0 <= getattr(self, name) < float("inf"):
                raise ValueError(f"model.{name} must be a finite number >= 0, got {getattr(self, name)!r}")
        if self.temperature is not None and not 0.0 < self.temperature < float("inf"):
            raise ValueError(f"model.temperature must be a finite positive number, got {self.temperature!r}")
        return self


# ---------------------------------------------------------------------------------------------------------
# Tokenizer (CRATE code, paper-notes §3.1): patches -> LN -> Linear -> LN, cls token, position embedding.

def patches(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(..., c, h, w) -> (..., h/s * w/s, s*s*c), CRATE's 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'."""
    *lead, c, h, w = images.shape
    s = patch_size
    x = images.reshape(*lead, c, h // s, s, w // s, s)
    x = x.permute(*range(len(lead)), -4, -2, -3, -1, -5)          # (..., h/s, w/s, s, s, c)
    return x.reshape(*lead, (h // s) * (w // s), s * s * c)


class Tokenizer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.patch_size = cfg.patch_size
        patch_dim = cfg.channels * cfg.patch_size ** 2
        self.patch_norm = nn.LayerNorm(patch_dim)
        self.patch_embed = nn.Linear(patch_dim, cfg.dim)
        self.embed_norm = nn.LayerNorm(cfg.dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, cfg.dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, cfg.num_patches + 1, cfg.dim))
        self.dropout = nn.Dropout(cfg.dropout)

    def patches(self, images: torch.Tensor) -> torch.Tensor:
        return patches(images, self.patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.embed_norm(self.patch_embed(self.patch_norm(self.patches(images))))  # (B, n, d)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embedding                         # (B, N = n+1, d)
        return self.dropout(x)


# ---------------------------------------------------------------------------------------------------------
# Output maps: the one place the variants differ (paper-notes §4.2). Each maps S (B, N, K*p) back to R^d.

class LearnedOutput(nn.Module):
    """`crate`: a learnable W and bias (eq. 115 of CRATE replaces (p/(N eps^2)) U by it); `crate-fix` freezes it."""

    def __init__(self, inner: int, dim: int, trainable: bool):
        super().__init__()
        self.linear = nn.Linear(inner, dim)
        self.linear.requires_grad_(trainable)

    def forward(self, s: torch.Tensor, w_qkv: torch.Tensor) -> torch.Tensor:
        return self.linear(s)


class TiedOutput(nn.Module):
    """`crate-c` (+1: S W_qkv = U S, eq. 18 as derived), `crate-n` (-1), `crate-t` (S W_qkv^T, transpose=True)."""

    def __init__(self, sign: float, transpose: bool):
        super().__init__()
        self.sign = sign
        self.transpose = transpose

    def forward(self, s: torch.Tensor, w_qkv: torch.Tensor) -> torch.Tensor:
        out = F.linear(s, w_qkv) if self.transpose else s @ w_qkv
        return self.sign * out

    def extra_repr(self) -> str:
        return f"sign={self.sign:+g}, transpose={self.transpose}"


class IdentityOutput(nn.Module):
    """`crate-identity`: S itself (needs K*p = d)."""

    def forward(self, s: torch.Tensor, w_qkv: torch.Tensor) -> torch.Tensor:
        return s


def make_output_map(variant: str, inner: int, dim: int) -> nn.Module:
    if variant == "crate":
        return LearnedOutput(inner, dim, trainable=True)
    if variant == "crate-fix":
        return LearnedOutput(inner, dim, trainable=False)
    if variant == "crate-c":
        return TiedOutput(+1.0, transpose=False)
    if variant == "crate-n":
        return TiedOutput(-1.0, transpose=False)
    if variant == "crate-t":
        return TiedOutput(+1.0, transpose=True)
    if variant == "crate-identity":
        return IdentityOutput()
    raise ValueError(f"unknown variant {variant!r}; allowed: {', '.join(VARIANTS)}")


# ---------------------------------------------------------------------------------------------------------
# MSSA (CRATE eqs. 10-12, as implemented): one shared projection U^T plays query, key and value.

def softmax_last(scores: torch.Tensor) -> torch.Tensor:
    """softmax over the last axis, computed with that axis moved to the front.

    torch's CPU softmax over a short last axis (N tokens, 5 for digits) is ~20x slower than over a long leading one
    (measured on 86k rows: 7.3 ms vs 0.3 ms; with the layout copies below this function takes ~2.5 ms). The other
    axes are flattened and zero-padded to a multiple of 64 columns so that every column goes through the same
    vectorised code: a column's result then does not depend on how many others there are, which
    keeps this model and the stacked ensemble forward (``zoo.stacked``) equal bit for bit.
    """
    moved = scores.movedim(-1, 0)
    columns = moved.reshape(moved.shape[0], -1)
    m = columns.shape[1]
    out = torch.softmax(F.pad(columns, (0, -m % 64)), dim=0)[:, :m]
    return out.reshape(moved.shape).movedim(0, -1).contiguous()   # contiguous: dropout masks fill in this order


class MSSA(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.heads, self.dim_head = cfg.heads, cfg.head_dim
        inner = cfg.heads * cfg.head_dim
        self.qkv = nn.Linear(cfg.dim, inner, bias=False)   # weight (K*p, d) = U^T
        self.scale = cfg.temperature if cfg.temperature is not None else cfg.head_dim ** -0.5
        self.attn_dropout = nn.Dropout(cfg.dropout)
        self.output_map = make_output_map(cfg.variant, inner, cfg.dim)
        self.out_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        w = self.qkv(x).reshape(b, n, self.heads, self.dim_head).transpose(1, 2)  # (B, K, N, p) = (U_k^T Z)^T
        attn = softmax_last(w @ w.transpose(-1, -2) * self.scale)                 # (B, K, N, N)
        s = self.attn_dropout(attn) @ w                                           # (B, K, N, p): SSA per head
        s = s.transpose(1, 2).reshape(b, n, self.heads * self.dim_head)           # (B, N, K*p)
        return self.out_dropout(self.output_map(s, self.qkv.weight))             # (B, N, d)


# ---------------------------------------------------------------------------------------------------------
# ISTA (CRATE eq. 17): one proximal step of the non-negative LASSO, Z' = ReLU(Z + eta D^T(Z - D Z) - eta lambda).

class ISTA(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.dim, cfg.dim))   # dictionary D
        nn.init.kaiming_uniform_(self.weight)
        self.step, self.lambd = cfg.ista_step, cfg.ista_lambda

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Row form: x + eta (x D - x D^T D) = x (I + eta (D - D^T D)); one matmul with this d x d map instead of
        # three with D (same function, ~half the layer's arithmetic).
        return F.relu(x @ ista_map(self.weight, self.step) - self.step * self.lambd)


def ista_map(d: torch.Tensor, step: float) -> torch.Tensor:
    """I + eta (D - D^T D) for a dictionary D (d x d), or for a stack of them (E, d, d)."""
    eye = torch.eye(d.shape[-1], dtype=d.dtype, device=d.device)
    return eye + step * (d - d.transpose(-1, -2) @ d)


# ---------------------------------------------------------------------------------------------------------
# Layer (CRATE eq. 18): Z^{l+1/2} = Z^l + MSSA(LN(Z^l)); Z^{l+1} = ISTA(LN(Z^{l+1/2})), no skip around ISTA.

class CRATELayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = nn.LayerNorm(cfg.dim)
        self.attn = MSSA(cfg)
        self.ista_norm = nn.LayerNorm(cfg.dim)
        self.ista = ISTA(cfg)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_half = z + self.attn(self.attn_norm(z))
        return z_half, self.ista(self.ista_norm(z_half))


# ---------------------------------------------------------------------------------------------------------
# Model: tokenizer, L layers, cls pooling, LN + linear head.

class CRATE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg.validate()
        self.tokenizer = Tokenizer(cfg)
        self.layers = nn.ModuleList(CRATELayer(cfg) for _ in range(cfg.depth))
        self.head_norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)

    def forward(self, images: torch.Tensor, return_features: bool = False):
        """Logits (B, classes); with ``return_features`` also, per layer, Z_in, Z_half, Z_out of shape (B, N, d)."""
        z = self.tokenizer(images)
        features = []
        for layer in self.layers:
            z_half, z_out = layer(z)
            if return_features:
                features.append({"Z_in": z, "Z_half": z_half, "Z_out": z_out})
            z = z_out
        logits = self.head(self.head_norm(z[:, 0]))
        return (logits, features) if return_features else logits

    def subspaces(self) -> torch.Tensor:
        """U^l for every layer, shape (depth, K, d, p): U_k = (rows k*p..(k+1)*p of W_qkv)^T."""
        cfg = self.config
        return torch.stack([
            layer.attn.qkv.weight.reshape(cfg.heads, cfg.head_dim, cfg.dim).transpose(1, 2)
            for layer in self.layers])


def build_model(variant: str, *, image_size: int, patch_size: int, channels: int, num_classes: int, dim: int,
                depth: int, heads: int, dropout: float = 0.0, dim_head: int | None = None,
                ista_step: float = 0.1, ista_lambda: float = 0.1, temperature: float | None = None) -> CRATE:
    """Build one CRATE variant; see ``VARIANTS`` and ``ModelConfig`` for what each argument means."""
    return CRATE(ModelConfig(variant=variant, image_size=image_size, patch_size=patch_size, channels=channels,
                             num_classes=num_classes, dim=dim, depth=depth, heads=heads, dim_head=dim_head,
                             dropout=dropout, ista_step=ista_step, ista_lambda=ista_lambda,
                             temperature=temperature))



def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
