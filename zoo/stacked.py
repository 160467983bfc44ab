"""CRATE's forward pass over E parameter sets at once: the ensemble trainer's and the noise searches' model.

The same equations as ``zoo.models``, in the same order, with every parameter carrying a leading member axis:
``params[name]`` has shape (E, *shape of CRATE's parameter ``name``). Each Linear becomes one batched matmul
(``bmm``/``baddbmm``) over the E members, so E small models cost one model's per-operation overhead. On the CPU the
eval-mode logits equal ``CRATE.forward`` of each member bit for bit (tested).

Dropout reproduces ``nn.Dropout`` member by member: member e with rate p_e > 0 draws its mask from its own
generator, site by site in the order ``CRATE.forward`` meets them (tokenizer, then attention and output map per
layer), as ``bernoulli(1 - p) / (1 - p)``; so a member seeded like a one-model run sees the same masks.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .models import ModelConfig, ista_map, patches, softmax_last


@dataclass
class StackedDropout:
    """Per-member dropout rates and generators (a member with rate 0 draws nothing, like ``nn.Dropout``)."""
    rates: list[float]
    generators: list[torch.Generator | None]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not any(self.rates):
            return x
        shape = x.shape[1:]
        noise = torch.stack([
            torch.ones(shape, dtype=x.dtype, device=x.device) if p == 0 else
            torch.empty(shape, dtype=x.dtype).bernoulli_(1 - p, generator=g).div_(1 - p).to(x.device)
            for p, g in zip(self.rates, self.generators)])
        return x * noise


def _no_dropout(x: torch.Tensor) -> torch.Tensor:
    return x


def _affine_shape(x: torch.Tensor, param: torch.Tensor) -> tuple[int, ...]:
    # a (E, d) parameter broadcast over the middle axes of x (E, ..., d)
    return (param.shape[0],) + (1,) * (x.ndim - 2) + (param.shape[-1],)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, normalized: torch.Tensor | None = None):
    """LayerNorm with per-member affine (E, d). ``addcmul`` rounds like the fused CPU kernel's final fma, so the
    result equals ``nn.LayerNorm`` bit for bit; ``normalized`` passes an already normalised (broadcast) x."""
    y = F.layer_norm(x, x.shape[-1:]) if normalized is None else normalized
    return torch.addcmul(bias.view(_affine_shape(y, bias)), y, weight.view(_affine_shape(y, weight)))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (E, ..., in) @ weight (E, out, in)^T + bias (E, out): one batched matmul."""
    e, n_in = x.shape[0], x.shape[-1]
    flat = x.reshape(e, -1, n_in)
    out = (torch.bmm(flat, weight.transpose(1, 2)) if bias is None
           else torch.baddbmm(bias.unsqueeze(1), flat, weight.transpose(1, 2)))
    return out.reshape(*x.shape[:-1], weight.shape[1])


def stacked_logits(cfg: ModelConfig, params: dict[str, torch.Tensor], images: torch.Tensor,
                   dropout=_no_dropout) -> torch.Tensor:
    """Logits (E, B, classes) of the E members in ``params`` on ``images``.

    ``images`` is (B, c, h, w), shared by every member, or (E, B, c, h, w), one batch per member. ``dropout`` is a
    ``StackedDropout`` in training and the identity (the default) in eval mode.
    """
    e = params["head.weight"].shape[0]
    x = patches(images, cfg.patch_size)
    shared = F.layer_norm(x, x.shape[-1:]).expand(e, *x.shape) if x.ndim == 3 else None  # normalised once
    x = layer_norm(x, params["tokenizer.patch_norm.weight"], params["tokenizer.patch_norm.bias"], shared)
    # Tokenizer: patches -> LN -> Linear -> LN, cls token, position embedding.
    x = linear(x, params["tokenizer.patch_embed.weight"], params["tokenizer.patch_embed.bias"])
    x = layer_norm(x, params["tokenizer.embed_norm.weight"], params["tokenizer.embed_norm.bias"])
    batch = x.shape[1]
    cls = params["tokenizer.cls_token"].reshape(e, 1, 1, -1).expand(e, batch, 1, cfg.dim)
    z = dropout(torch.cat([cls, x], dim=2) + params["tokenizer.pos_embedding"])   # (E, B, N, d)
    n, k, p = z.shape[2], cfg.heads, cfg.head_dim
    scale = cfg.temperature if cfg.temperature is not None else p ** -0.5
    for layer in range(cfg.depth):
        pre = f"layers.{layer}."
        # MSSA (CRATE eqs. 10-12) with the variant's output map; Z^{l+1/2} = Z^l + MSSA(LN(Z^l)) (eq. 18).
        y = layer_norm(z, params[pre + "attn_norm.weight"], params[pre + "attn_norm.bias"])
        w_qkv = params[pre + "attn.qkv.weight"]                                     # (E, K*p, d) = U^T
        w = linear(y, w_qkv).reshape(e, batch, n, k, p).transpose(2, 3)             # (E, B, K, N, p)
        attn = softmax_last(w @ w.transpose(-1, -2) * scale)
        s = (dropout(attn) @ w).transpose(2, 3).reshape(e, batch, n, k * p)         # (E, B, N, K*p)
        z_half = z + dropout(_output_map(cfg.variant, s, w_qkv, params, pre))
        # ISTA (CRATE eq. 17): ReLU(x (I + eta (D - D^T D)) - eta lambda), row form.
        y = layer_norm(z_half, params[pre + "ista_norm.weight"], params[pre + "ista_norm.bias"])
        flat = torch.bmm(y.reshape(e, batch * n, cfg.dim), ista_map(params[pre + "ista.weight"], cfg.ista_step))
        z = F.relu(flat - cfg.ista_step * cfg.ista_lambda).reshape(e, batch, n, cfg.dim)
    pooled = layer_norm(z[:, :, 0], params["head_norm.weight"], params["head_norm.bias"])
    return linear(pooled, params["head.weight"], params["head.bias"])


def _output_map(variant: str, s: torch.Tensor, w_qkv: torch.Tensor, params: dict, pre: str) -> torch.Tensor:
    """The variants' maps of S (E, B, N, K*p) back to R^d, as in ``zoo.models.make_output_map``."""
    if variant in ("crate", "crate-fix"):
        return linear(s, params[pre + "attn.output_map.linear.weight"], params[pre + "attn.output_map.linear.bias"])
    if variant == "crate-identity":
        return s
    flat = s.reshape(s.shape[0], -1, s.shape[-1])
    if variant == "crate-t":
        out = torch.bmm(flat, w_qkv.transpose(1, 2))
    else:                                                                            # crate-c (+), crate-n (-)
        out = torch.bmm(flat, w_qkv)
        if variant == "crate-n":
            out = -1.0 * out
    return out.reshape(*s.shape[:-1], out.shape[-1])
