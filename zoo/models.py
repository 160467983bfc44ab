"""CRATE white-box transformers and the output-map variants studied by Hu, Zou & Xu (2024).

The forward pass is written once, read top to bottom like the paper: tokenizer, MSSA (with the output map that the
variants change), ISTA, layer, model. It is a set of functions over parameters with a leading member axis E:
``params[name]`` has shape (E, *shape of the CRATE parameter ``name``). E ensemble members or E perturbed copies of
one model are one call, where each Linear is one batched matmul (``bmm``/``baddbmm``) and E small models pay one
model's per-operation overhead. One model is E = 1: ``CRATE.forward`` calls the same functions on its own
parameters (read through ``named_parameters``, so ``torch.func.functional_call`` still substitutes them), applied
with torch's one-model kernels (``Params``). On the CPU member e of a stack gives the same logits, bit for bit, as
the model of its own (tested).

The nn.Modules below own the parameters (names and shapes are those of every stored checkpoint) and call the same
functions. Row convention throughout: tokens are rows and a Linear computes ``x @ W.T``, so the qkv weight ``W_qkv``
of shape (K*p, d) is ``U^T = [U_1^T; ...; U_K^T]``.

Adding a variant is one entry in ``OUTPUT_MAPS`` (README, "Add a variant").
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


# ---------------------------------------------------------------------------------------------------------
# Output maps: the one place the variants differ (paper-notes §4.2). Each maps S (E, ..., K*p) back to R^d.

@dataclass(frozen=True)
class OutputMap:
    """A variant's map of the heads' outputs S back to R^d, and what it owns.

    ``learned``: its own Linear (K*p -> d, with bias; parameters ``attn.output_map.linear.{weight,bias}``),
    trainable or frozen at its init. ``tied``: ``sign * S W_qkv`` (or ``S W_qkv^T`` with ``transpose``), reusing the
    qkv projection, so it owns nothing and path-norm counts W_qkv once per use. ``identity``: S itself.
    """
    kind: str                  # "learned" | "tied" | "identity"
    trainable: bool = True     # learned: crate-fix freezes it
    sign: float = 1.0          # tied
    transpose: bool = False    # tied

    def __post_init__(self):
        if self.kind not in ("learned", "tied", "identity"):
            raise ValueError(f"output map kind must be learned, tied or identity, got {self.kind!r}")

    @property
    def tied(self) -> bool:
        return self.kind == "tied"

    @property
    def needs_square_heads(self) -> bool:
        """S goes straight back into R^d (S W_qkv^T or S itself), so K*p must equal d."""
        return self.kind == "identity" or self.tied and self.transpose

    def apply(self, s: torch.Tensor, attn: "Params") -> torch.Tensor:
        """S (E, ..., K*p) -> (E, ..., d); ``attn`` the MSSA's parameters (``qkv``, ``output_map``)."""
        if self.kind == "learned":
            return attn.linear(s, "output_map.linear")
        if self.kind == "identity":
            return s
        w_qkv = attn.value("qkv.weight")                                              # (E, K*p, d) = U^T
        out = attn.matmul(s, w_qkv.transpose(-1, -2) if self.transpose else w_qkv)
        return self.sign * out if self.sign != 1.0 else out


OUTPUT_MAPS: dict[str, OutputMap] = {
    "crate": OutputMap("learned"),                          # a learnable W and bias (eq. 115 of CRATE)
    "crate-c": OutputMap("tied", sign=+1.0),                # S W_qkv = U S, eq. 18 as derived
    "crate-n": OutputMap("tied", sign=-1.0),                # its negative
    "crate-t": OutputMap("tied", transpose=True),           # S W_qkv^T
    "crate-fix": OutputMap("learned", trainable=False),     # crate's W and bias frozen at init
    "crate-identity": OutputMap("identity"),                # S itself
}
VARIANTS = tuple(OUTPUT_MAPS)
MAIN_VARIANTS = ("crate-c", "crate-n", "crate-t", "crate")
NEEDS_SQUARE_HEADS = tuple(v for v, m in OUTPUT_MAPS.items() if m.needs_square_heads)


def output_map(variant: str) -> OutputMap:
    """The variant's entry of ``OUTPUT_MAPS``; an unknown variant is an error naming the allowed ones."""
    try:
        return OUTPUT_MAPS[variant]
    except KeyError:
        raise ValueError(f"unknown variant {variant!r}; allowed: {', '.join(OUTPUT_MAPS)}") from None


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

    @property
    def scale(self) -> float:
        return self.temperature if self.temperature is not None else self.head_dim ** -0.5

    def validate(self) -> "ModelConfig":
        out_map = output_map(self.variant)
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
        if out_map.needs_square_heads and self.heads * self.head_dim != self.dim:
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
# Parameters with a member axis, dropout, and the batched primitives the forward is written in.

class Params:
    """Parameters by their CRATE names relative to a module path (``at``), and the three ways the forward applies
    them: ``linear``, ``layer_norm`` and ``matmul``, each over a leading member axis E of the activations.

    Stacked (E members, ``params[name]`` of shape (E, *shape)) they are batched kernels. A lone module's own
    parameters (``Params.of``, no member axis) go through torch's one-model kernels (``F.linear``, fused LayerNorm,
    ``mm``; the activations' member axis of 1 folds into the rows): the same values as the batched kernels at E = 1
    (tested) and the gradients of the former one-model modules, where a stack of one's backward cost ~1.4x
    (measured: bmm's weight gradients), and single-model measures take gradients. The zoo always trains stacked, a
    group of one included, so that a member's bits do not depend on its group.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], prefix: str = "", lone: bool = False):
        self.tensors, self.prefix, self.lone = tensors, prefix, lone

    @staticmethod
    def of(module: nn.Module) -> "Params":
        """A module's own parameters (read through ``named_parameters``, so that ``functional_call`` substitutes
        them), applied as one model."""
        return Params(dict(module.named_parameters()), lone=True)

    def at(self, module: str) -> "Params":
        return Params(self.tensors, f"{self.prefix}{module}.", self.lone)

    def value(self, name: str) -> torch.Tensor:
        """The tensor as stored: (E, *shape) stacked, (*shape) lone."""
        return self.tensors[self.prefix + name]

    def __getitem__(self, name: str) -> torch.Tensor:
        """The tensor with its member axis, (E, *shape) (E = 1 for a lone module)."""
        return self.value(name).unsqueeze(0) if self.lone else self.value(name)

    def linear(self, x: torch.Tensor, module: str) -> torch.Tensor:
        """x (E, ..., in) -> (E, ..., out) through the Linear ``module`` (its bias if it has one)."""
        weight, bias = self.value(f"{module}.weight"), self.tensors.get(f"{self.prefix}{module}.bias")
        if self.lone:
            return F.linear(x, weight, bias)
        return linear(x, weight, bias)

    def layer_norm(self, x: torch.Tensor, module: str) -> torch.Tensor:
        """LayerNorm ``module`` over the last axis of x (E, ..., d); x may be one batch (1, ...) for every member."""
        weight, bias = self.value(f"{module}.weight"), self.value(f"{module}.bias")
        if self.lone:
            return F.layer_norm(x, x.shape[-1:], weight, bias)
        return layer_norm(x, weight, bias)

    def matmul(self, x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        """x (E, ..., k) @ matrix (E, k, m), or (k, m) lone."""
        if self.lone:
            return x @ matrix
        flat = torch.bmm(x.reshape(x.shape[0], -1, x.shape[-1]), matrix)
        return flat.reshape(*x.shape[:-1], matrix.shape[-1])


def no_dropout(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass
class MemberDropout:
    """Dropout of every member at every site: member e with rate p_e > 0 multiplies by
    ``bernoulli(1 - p) / (1 - p)`` drawn from its generator (None: the global one), site by site in the order the
    forward meets them (tokenizer, then attention and output map per layer). This is what ``nn.Dropout`` draws, so
    a member seeded like a lone model sees the same masks; a member with rate 0 draws nothing."""
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


def _affine_shape(x: torch.Tensor, param: torch.Tensor) -> tuple[int, ...]:
    # a (E, d) parameter broadcast over the middle axes of x (E, ..., d)
    return (param.shape[0],) + (1,) * (x.ndim - 2) + (param.shape[-1],)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """LayerNorm with per-member affine (E, d) of x (E, ..., d), or of one batch (1, ..., d) shared by all members
    (normalised once, broadcast). ``addcmul`` rounds like the fused CPU kernel's final fma, so the result equals
    ``nn.LayerNorm`` bit for bit."""
    y = F.layer_norm(x, x.shape[-1:])
    return torch.addcmul(bias.view(_affine_shape(y, bias)), y, weight.view(_affine_shape(y, weight)))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (E, ..., in) @ weight (E, out, in)^T + bias (E, out): one batched matmul."""
    e, n_in = x.shape[0], x.shape[-1]
    flat = x.reshape(e, -1, n_in)
    out = (torch.bmm(flat, weight.transpose(1, 2)) if bias is None
           else torch.baddbmm(bias.unsqueeze(1), flat, weight.transpose(1, 2)))
    return out.reshape(*x.shape[:-1], weight.shape[1])


# torch multiplies batches of matrices with a plain loop when (rows x inner x columns) of one product is below this
# (aten's bmm on the CPU), and with BLAS above it
SMALL_PRODUCT = 400
# below this many products the layout copies cost more than they save (measured: 256 products 0.93x, 1024 1.11x)
MANY_PRODUCTS = 512


def head_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (..., n, k) @ b (..., k, m), the same leading axes on both: attention's products per head and image.

    For digits they are 5 x 8 matrices, thousands per step, which torch multiplies with a plain loop whose speed
    depends on the layout 2-2.5x (measured: 3072 products of 5x5 by 5x8 take 1.1 ms with both factors row-major,
    0.53 ms with the second column-major) while it sums in the same order whatever the layout. Below
    ``SMALL_PRODUCT`` the factors are therefore laid out as that loop reads fastest (``_SmallMatmul``): the values
    and gradients are those of ``a @ b`` bit for bit (tested). Above it, for few products and on a GPU, ``a @ b``
    itself."""
    *lead, n, k = a.shape
    m = b.shape[-1]
    if a.device.type != "cpu" or n * k * m >= SMALL_PRODUCT or a.numel() < MANY_PRODUCTS * n * k:
        return a @ b
    rows = a.reshape(-1, n, k)
    columns = b.transpose(-1, -2).reshape(-1, m, k).transpose(1, 2)
    return _SmallMatmul.apply(rows, columns).reshape(*lead, n, m)


class _SmallMatmul(torch.autograd.Function):
    """``torch.bmm`` of small matrices given the first factor row-major and the second column-major, whose two
    backward products are laid out the same way."""
    generate_vmap_rule = True

    @staticmethod
    def forward(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.bmm(a, b)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, b = ctx.saved_tensors
        grad_a = torch.bmm(grad.contiguous(), _column_major(b.transpose(1, 2))) if ctx.needs_input_grad[0] else None
        grad_b = torch.bmm(a.transpose(1, 2).contiguous(), _column_major(grad)) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b


def _column_major(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).contiguous().transpose(1, 2)


def softmax_last(scores: torch.Tensor) -> torch.Tensor:
    """softmax over the last axis, computed with that axis moved to the front.

    torch's CPU softmax over a short last axis (N tokens, 5 for digits) is ~20x slower than over a long leading one
    (measured on 86k rows: 7.3 ms vs 0.3 ms; with the layout copies below this function takes ~2.5 ms). The other
    axes are flattened and zero-padded to a multiple of 64 columns so that every column goes through the same
    vectorised code: a column's result then does not depend on how many others there are, which keeps a member of
    a stack equal bit for bit to a model of its own.
    """
    moved = scores.movedim(-1, 0)
    columns = moved.reshape(moved.shape[0], -1)
    m = columns.shape[1]
    out = torch.softmax(F.pad(columns, (0, -m % 64)), dim=0)[:, :m]
    return out.reshape(moved.shape).movedim(0, -1).contiguous()   # contiguous: dropout masks fill in this order


# ---------------------------------------------------------------------------------------------------------
# Tokenizer (CRATE code, paper-notes §3.1): patches -> LN -> Linear -> LN, cls token, position embedding.

def patches(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(..., c, h, w) -> (..., h/s * w/s, s*s*c), CRATE's 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'."""
    *lead, c, h, w = images.shape
    s = patch_size
    x = images.reshape(*lead, c, h // s, s, w // s, s)
    x = x.permute(*range(len(lead)), -4, -2, -3, -1, -5)          # (..., h/s, w/s, s, s, c)
    return x.reshape(*lead, (h // s) * (w // s), s * s * c)


def tokenize(cfg: ModelConfig, p: Params, images: torch.Tensor, dropout=no_dropout) -> torch.Tensor:
    """Images (B, c, h, w), shared by every member, or (E, B, c, h, w) -> tokens Z^1 (E, B, N = n+1, d)."""
    x = patches(images, cfg.patch_size)                                             # (E or 1, B, n, s*s*c)
    x = p.layer_norm(x if images.ndim == 5 else x.unsqueeze(0), "patch_norm")      # (E, B, n, s*s*c)
    x = p.layer_norm(p.linear(x, "patch_embed"), "embed_norm")                      # (E, B, n, d)
    e = x.shape[0]
    cls = p["cls_token"].reshape(e, 1, 1, -1).expand(e, x.shape[1], 1, cfg.dim)
    return dropout(torch.cat([cls, x], dim=2) + p["pos_embedding"])


# ---------------------------------------------------------------------------------------------------------
# MSSA (CRATE eqs. 10-12, as implemented): one shared projection U^T plays query, key and value.

def mssa(cfg: ModelConfig, p: Params, z: torch.Tensor, dropout=no_dropout) -> torch.Tensor:
    """(E, B, N, d) -> (E, B, N, d): SSA per head, then the variant's output map."""
    e, b, n, _ = z.shape
    k, hd = cfg.heads, cfg.head_dim
    w = p.linear(z, "qkv").reshape(e, b, n, k, hd).transpose(2, 3)                  # (E, B, K, N, p) = (U_k^T Z)^T
    attn = softmax_last(head_matmul(w, w.transpose(-1, -2)) * cfg.scale)            # (E, B, K, N, N)
    s = head_matmul(dropout(attn), w).transpose(2, 3).reshape(e, b, n, k * hd)      # (E, B, N, K*p)
    return dropout(output_map(cfg.variant).apply(s, p))


# ---------------------------------------------------------------------------------------------------------
# ISTA (CRATE eq. 17): one proximal step of the non-negative LASSO, Z' = ReLU(Z + eta D^T(Z - D Z) - eta lambda).

def ista_map(d: torch.Tensor, step: float) -> torch.Tensor:
    """I + eta (D - D^T D) for a dictionary D (d x d), or for a stack of them (E, d, d)."""
    eye = torch.eye(d.shape[-1], dtype=d.dtype, device=d.device)
    return eye + step * (d - d.transpose(-1, -2) @ d)


def ista(cfg: ModelConfig, p: Params, z: torch.Tensor) -> torch.Tensor:
    # Row form: x + eta (x D - x D^T D) = x (I + eta (D - D^T D)); one matmul with this d x d map instead of
    # three with D (same function, ~half the layer's arithmetic).
    return F.relu(p.matmul(z, ista_map(p.value("weight"), cfg.ista_step)) - cfg.ista_step * cfg.ista_lambda)


# ---------------------------------------------------------------------------------------------------------
# Layer (CRATE eq. 18): Z^{l+1/2} = Z^l + MSSA(LN(Z^l)); Z^{l+1} = ISTA(LN(Z^{l+1/2})), no skip around ISTA.

def crate_layer(cfg: ModelConfig, p: Params, z: torch.Tensor, dropout=no_dropout):
    z_half = z + mssa(cfg, p.at("attn"), p.layer_norm(z, "attn_norm"), dropout)
    return z_half, ista(cfg, p.at("ista"), p.layer_norm(z_half, "ista_norm"))


# ---------------------------------------------------------------------------------------------------------
# Model: tokenizer, L layers, cls pooling, LN + linear head.

def crate_forward(cfg: ModelConfig, params: dict[str, torch.Tensor] | Params, images: torch.Tensor,
                  dropout=no_dropout, return_features: bool = False):
    """Logits (E, B, classes) of the E members in ``params`` on ``images`` ((B, c, h, w) shared, or one batch per
    member (E, B, c, h, w)); with ``return_features`` also, per layer, Z_in, Z_half, Z_out (E, B, N, d).
    ``dropout`` is a ``MemberDropout`` in training and the identity (the default) in eval mode."""
    p = params if isinstance(params, Params) else Params(params)
    z = tokenize(cfg, p.at("tokenizer"), images, dropout)
    features = []
    for layer in range(cfg.depth):
        z_half, z_out = crate_layer(cfg, p.at(f"layers.{layer}"), z, dropout)
        if return_features:
            features.append({"Z_in": z, "Z_half": z_half, "Z_out": z_out})
        z = z_out
    logits = p.linear(p.layer_norm(z[:, :, 0], "head_norm"), "head")                 # (E, B, classes)
    return (logits, features) if return_features else logits


# ---------------------------------------------------------------------------------------------------------
# The modules: they own the parameters (the names of every stored checkpoint) and run the functions above at E = 1.

class _Module(nn.Module):
    """A CRATE part: ``self.config``; in train mode it draws dropout like ``nn.Dropout`` (global generator)."""

    def dropout(self):
        return MemberDropout([self.config.dropout], [None]) if self.training else no_dropout


class Tokenizer(_Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        patch_dim = cfg.channels * cfg.patch_size ** 2
        self.patch_norm = nn.LayerNorm(patch_dim)
        self.patch_embed = nn.Linear(patch_dim, cfg.dim)
        self.embed_norm = nn.LayerNorm(cfg.dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, cfg.dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, cfg.num_patches + 1, cfg.dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return tokenize(self.config, Params.of(self), images, self.dropout())[0]


class VariantOutput(nn.Module):
    """The output map's parameters (a Linear for ``learned`` maps, nothing otherwise) and its table entry."""

    def __init__(self, variant: str, inner: int, dim: int):
        super().__init__()
        self.spec = output_map(variant)
        if self.spec.kind == "learned":
            self.linear = nn.Linear(inner, dim)
            self.linear.requires_grad_(self.spec.trainable)

    def forward(self, s: torch.Tensor, w_qkv: torch.Tensor) -> torch.Tensor:
        own = {"qkv.weight": w_qkv, **{f"output_map.{n}": p for n, p in self.named_parameters()}}
        return self.spec.apply(s.unsqueeze(0), Params(own, lone=True))[0]

    def extra_repr(self) -> str:
        return repr(self.spec)


class MSSA(_Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.qkv = nn.Linear(cfg.dim, cfg.heads * cfg.head_dim, bias=False)   # weight (K*p, d) = U^T
        self.output_map = VariantOutput(cfg.variant, cfg.heads * cfg.head_dim, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mssa(self.config, Params.of(self), x.unsqueeze(0), self.dropout())[0]


class ISTA(_Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.weight = nn.Parameter(torch.empty(cfg.dim, cfg.dim))   # dictionary D
        nn.init.kaiming_uniform_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ista(self.config, Params.of(self), x.unsqueeze(0))[0]


class CRATELayer(_Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.attn_norm = nn.LayerNorm(cfg.dim)
        self.attn = MSSA(cfg)
        self.ista_norm = nn.LayerNorm(cfg.dim)
        self.ista = ISTA(cfg)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_half, z_out = crate_layer(self.config, Params.of(self), z.unsqueeze(0), self.dropout())
        return z_half[0], z_out[0]


class CRATE(_Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg.validate()
        self.tokenizer = Tokenizer(cfg)
        self.layers = nn.ModuleList(CRATELayer(cfg) for _ in range(cfg.depth))
        self.head_norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)

    def forward(self, images: torch.Tensor, return_features: bool = False):
        """Logits (B, classes); with ``return_features`` also, per layer, Z_in, Z_half, Z_out of shape (B, N, d)."""
        out = crate_forward(self.config, Params.of(self), images, self.dropout(), return_features)
        if not return_features:
            return out[0]
        logits, features = out
        return logits[0], [{name: z[0] for name, z in layer.items()} for layer in features]

    def subspaces(self) -> torch.Tensor:
        """U^l for every layer, shape (depth, K, d, p): U_k = (rows k*p..(k+1)*p of W_qkv)^T."""
        return subspaces(self.config, {n: p.unsqueeze(0) for n, p in self.named_parameters()})[0]


def subspaces(cfg: ModelConfig, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """U^l of every member and layer, shape (E, depth, K, d, p)."""
    return torch.stack([params[f"layers.{layer}.attn.qkv.weight"].reshape(-1, cfg.heads, cfg.head_dim, cfg.dim)
                        .transpose(2, 3) for layer in range(cfg.depth)], dim=1)


def build_model(variant: str, *, image_size: int, patch_size: int, channels: int, num_classes: int, dim: int,
                depth: int, heads: int, dropout: float = 0.0, dim_head: int | None = None,
                ista_step: float = 0.1, ista_lambda: float = 0.1, temperature: float | None = None) -> CRATE:
    """Build one CRATE variant; see ``OUTPUT_MAPS`` and ``ModelConfig`` for what each argument means."""
    return CRATE(ModelConfig(variant=variant, image_size=image_size, patch_size=patch_size, channels=channels,
                             num_classes=num_classes, dim=dim, depth=depth, heads=heads, dim_head=dim_head,
                             dropout=dropout, ista_step=ista_step, ista_lambda=ista_lambda,
                             temperature=temperature))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
