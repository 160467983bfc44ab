"""Official CRATE checkpoints <-> our ``crate`` variant: the one place that knows the official parameter layout.

What was confirmed, and where: ``model/crate.py`` of github.com/Ma-Lab-Berkeley/CRATE, read at commit 1c47ccc
(the last commit touching it; its four earlier versions differ only in formatting and an unused ``mlp_dim``).

- Tokenizer: ``to_patch_embedding = Sequential(Rearrange('b c (h p1) (w p2) -> b (h w) (p1 p2 c)'),
  LayerNorm(patch_dim), Linear(patch_dim, dim), LayerNorm(dim))`` (so its parameters are ``.1``, ``.2``, ``.3``);
  ``cls_token`` (1, 1, dim) is prepended, then ``x += pos_embedding[:, :n+1]`` with ``pos_embedding``
  (1, num_patches + 1, dim); embedding dropout. Our ``zoo.models.patches`` uses the same patch order.
- Layer i: ``transformer.layers[i] = ModuleList([PreNorm(dim, Attention), PreNorm(dim, FeedForward)])`` with
  ``PreNorm(x) = fn(LayerNorm(x))``, and ``Transformer.forward`` does ``grad_x = attn(x) + x; x = ff(grad_x)``:
  a skip around attention, none around the ISTA block, as in our ``CRATELayer``.
- Attention: one ``qkv = Linear(dim, heads*dim_head, bias=False)`` used as query, key and value;
  ``softmax(w w^T * dim_head ** -0.5)`` (our ``temperature=None``); ``to_out = Sequential(Linear(inner, dim),
  Dropout)``, except when ``heads == 1 and dim_head == dim``, where ``to_out`` is ``nn.Identity()`` and the state
  dict has no ``to_out`` keys: that model is our ``crate-identity`` (S itself), every other one our ``crate``.
- FeedForward (the ISTA block): ``weight`` (dim, dim) = D; ``relu(x + step_size * (F.linear(x, D.t()) -
  F.linear(F.linear(x, D), D.t())) - step_size * lambd)``, i.e. in row form ``relu(x + eta (x D - x D^T D) -
  eta lambda)``, our ``ISTA`` with ``ista.weight = D`` untransposed. ``lambd = 0.1`` is hard-coded; ``step_size``
  is the model's ``ista`` argument, 0.1 by default and in every preset (CRATE_tiny ... CRATE_large).
- Head: ``pool='cls'`` by default (``x[:, 0]``), then ``mlp_head = Sequential(LayerNorm(dim), Linear(dim,
  num_classes))``. A model built with ``pool='mean'`` has the same state dict and cannot be told apart: its
  logits here would be wrong, so such a checkpoint must not be loaded.
- Saving: ``main.py`` writes ``{'state_dict': model.state_dict(), 'epoch', 'arch', 'optimizer', ...}`` of a
  ``DataParallel``/``DistributedDataParallel`` model (keys prefixed ``module.``); ``finetune.py`` loads released
  weights from ``torch.load(ckpt)['model']`` and writes ``{'model': net.state_dict(), ...}`` of a
  ``DataParallel`` net. So both nestings and the ``module.`` prefix are unwrapped here, and nothing else.

The state dict fixes every size but the number of heads (``qkv`` is (heads*dim_head, dim) for any split) and the
channel count (``patch_dim = channels * patch**2``); those are arguments. Images are taken to be square, as in
every official preset (the official code also allows rectangles, which a patch count alone cannot reveal).
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from .errors import BadValueError
from .models import CRATE, build_model
from .store import load_foreign_checkpoint

OFFICIAL_ISTA_STEP = 0.1    # FeedForward.step_size: CRATE(ista=0.1), the default and every preset's value
OFFICIAL_ISTA_LAMBDA = 0.1  # FeedForward.lambd, hard-coded in the official code

# Official key -> our key, for the parameters outside the layers.
KEY_MAP = {
    "to_patch_embedding.1.weight": "tokenizer.patch_norm.weight",
    "to_patch_embedding.1.bias": "tokenizer.patch_norm.bias",
    "to_patch_embedding.2.weight": "tokenizer.patch_embed.weight",
    "to_patch_embedding.2.bias": "tokenizer.patch_embed.bias",
    "to_patch_embedding.3.weight": "tokenizer.embed_norm.weight",
    "to_patch_embedding.3.bias": "tokenizer.embed_norm.bias",
    "cls_token": "tokenizer.cls_token",
    "pos_embedding": "tokenizer.pos_embedding",
    "mlp_head.0.weight": "head_norm.weight",
    "mlp_head.0.bias": "head_norm.bias",
    "mlp_head.1.weight": "head.weight",
    "mlp_head.1.bias": "head.bias",
}
# Official key -> our key inside layer {i}: .0 is PreNorm(Attention), .1 is PreNorm(FeedForward = ISTA).
LAYER_KEY_MAP = {
    "transformer.layers.{i}.0.norm.weight": "layers.{i}.attn_norm.weight",
    "transformer.layers.{i}.0.norm.bias": "layers.{i}.attn_norm.bias",
    "transformer.layers.{i}.0.fn.qkv.weight": "layers.{i}.attn.qkv.weight",
    "transformer.layers.{i}.0.fn.to_out.0.weight": "layers.{i}.attn.output_map.linear.weight",
    "transformer.layers.{i}.0.fn.to_out.0.bias": "layers.{i}.attn.output_map.linear.bias",
    "transformer.layers.{i}.1.norm.weight": "layers.{i}.ista_norm.weight",
    "transformer.layers.{i}.1.norm.bias": "layers.{i}.ista_norm.bias",
    "transformer.layers.{i}.1.fn.weight": "layers.{i}.ista.weight",
}
_TO_OUT = ".0.fn.to_out.0."   # the keys an official model without an output projection does not have
_LAYER_INDEX = re.compile(r"transformer\.layers\.(\d+)\.")
# The keys the architecture is read from (layer 0's qkv gives heads*dim_head).
_SHAPE_SOURCES = ("to_patch_embedding.2.weight", "pos_embedding", "mlp_head.1.weight",
                  "transformer.layers.0.0.fn.qkv.weight")


def key_map(depth: int, project_out: bool = True) -> dict[str, str]:
    """{official key: our key} of a model with ``depth`` layers (without the ``to_out`` keys if not
    ``project_out``)."""
    keys = dict(KEY_MAP)
    for i in range(depth):
        keys.update({official.format(i=i): ours.format(i=i)
                     for official, ours in LAYER_KEY_MAP.items() if project_out or _TO_OUT not in official})
    return keys


def unwrap_checkpoint(checkpoint: Mapping) -> dict[str, torch.Tensor]:
    """The state dict inside an official checkpoint: under ``"model"`` (finetune.py, the released weights) or
    ``"state_dict"`` (main.py) if it is nested, with the ``module.`` prefix of (Distributed)DataParallel removed."""
    if not isinstance(checkpoint, Mapping):
        raise BadValueError(f"an official CRATE checkpoint is a dict of tensors, got {type(checkpoint).__name__}")
    if "cls_token" not in checkpoint and "module.cls_token" not in checkpoint:
        for nest in ("model", "state_dict"):
            if isinstance(checkpoint.get(nest), Mapping):
                checkpoint = checkpoint[nest]
                break
    state = dict(checkpoint)
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    not_tensors = [f"{k!r} ({type(v).__name__})" for k, v in state.items()
                   if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise BadValueError(f"official CRATE state dict: entries that are not a name and a tensor: "
                            f"{', '.join(not_tensors)}")
    return state


def crate_from_official(checkpoint: Mapping, *, heads: int, channels: int = 3,
                        ista_step: float = OFFICIAL_ISTA_STEP) -> CRATE:
    """Our CRATE computing the same function as the official model whose state dict (or checkpoint dict, see
    ``unwrap_checkpoint``) is given.

    Parameters
    ----------
    checkpoint : the official ``model.state_dict()``, or a checkpoint dict holding it under "model"/"state_dict".
    heads : K, the official ``heads`` argument (the state dict does not fix it); dim_head = qkv rows / heads.
    channels : image channels, the official ``channels`` argument (3 by default, as in the official code).
    ista_step : the official ``ista`` argument (0.1 by default and in every preset); lambda is fixed at 0.1.

    Returns
    -------
    A ``crate`` model in eval mode (``crate-identity`` when heads == 1 and dim_head == dim, where the official
    model has no output projection), with dim, depth, num_classes, patch and image size read from the shapes.
    Dropout is 0: the checkpoint does not record it and measures evaluate the model in eval mode anyway.

    Raises BadValueError naming every missing, extra and misshaped key (expected vs got shape), or the shape that
    gives a non-square patch or a non-integer image side.
    """
    for name, value in (("heads", heads), ("channels", channels)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise BadValueError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(ista_step, bool) or not isinstance(ista_step, (int, float)) or not 0.0 <= ista_step < math.inf:
        raise BadValueError(f"ista_step must be a finite number >= 0, got {ista_step!r}")
    state = unwrap_checkpoint(checkpoint)
    dim, patch_dim, tokens, num_classes, inner = _read_sizes(state)
    depth = 1 + max(int(m.group(1)) for m in map(_LAYER_INDEX.match, state) if m)
    if inner % heads:
        raise BadValueError(f"transformer.layers.0.0.fn.qkv.weight has {inner} rows (heads*dim_head), not a "
                            f"multiple of heads={heads}")
    dim_head = inner // heads
    patch_size = _square_side(patch_dim // channels) if patch_dim % channels == 0 else None
    if patch_size is None:
        raise BadValueError(f"to_patch_embedding.2.weight has patch_dim {patch_dim} columns, which is not "
                            f"channels={channels} times a square (channels * patch**2)")
    side = _square_side(tokens - 1)
    if side is None:
        raise BadValueError(f"pos_embedding has {tokens} rows = {tokens - 1} patches + cls, and {tokens - 1} is not "
                            f"a square number of patches: the image side would not be an integer")
    project_out = not (heads == 1 and dim_head == dim)   # the official Attention's own rule
    model = build_model("crate" if project_out else "crate-identity", image_size=side * patch_size,
                        patch_size=patch_size, channels=channels, num_classes=num_classes, dim=dim, depth=depth,
                        heads=heads, dim_head=None if inner == dim else dim_head, dropout=0.0,
                        ista_step=ista_step, ista_lambda=OFFICIAL_ISTA_LAMBDA,
                        temperature=dim_head ** -0.5)  # the official scale, set here rather than by our default
    keys = key_map(depth, project_out)
    ours = model.state_dict()
    _check_keys(state, {official: tuple(ours[mine].shape) for official, mine in keys.items()}, heads)
    # strict: our table must name every parameter of ours, or a renamed one in zoo.models is caught here
    model.load_state_dict({keys[k]: v for k, v in state.items()}, strict=True)
    return model.eval()


def load_official_checkpoint(path: str | Path, *, heads: int, channels: int = 3,
                             ista_step: float = OFFICIAL_ISTA_STEP) -> CRATE:
    """``crate_from_official`` of a checkpoint file, read with ``torch.load(weights_only=True)`` (never unpickled)."""
    return crate_from_official(load_foreign_checkpoint(Path(path)), heads=heads, channels=channels,
                               ista_step=ista_step)


def official_state_dict(model: CRATE) -> dict[str, torch.Tensor]:
    """The state dict of ``model`` in the official layout (what ``crate_from_official`` reads back): a ``crate``
    model, or a ``crate-identity`` one with a single head of size dim (the official model without to_out). The
    ISTA step is not in a state dict: a model with ``ista_step`` other than 0.1 needs the official ``ista=`` (and
    ``crate_from_official(..., ista_step=)``) to compute the same function again."""
    cfg = model.config
    project_out = cfg.variant == "crate"
    if not project_out and not (cfg.variant == "crate-identity" and cfg.heads == 1 and cfg.head_dim == cfg.dim):
        raise BadValueError(f"the official CRATE has a learned output map (or none, with one head of size dim); "
                            f"variant {cfg.variant!r} with heads={cfg.heads}, dim_head={cfg.head_dim} has no "
                            f"official layout")
    if cfg.ista_lambda != OFFICIAL_ISTA_LAMBDA or cfg.temperature not in (None, cfg.head_dim ** -0.5):
        raise BadValueError(f"the official CRATE fixes lambda = {OFFICIAL_ISTA_LAMBDA} and the attention scale "
                            f"dim_head**-0.5; this model has ista_lambda={cfg.ista_lambda}, temperature="
                            f"{cfg.temperature}")
    ours = model.state_dict()
    return {official: ours[mine].detach().clone() for official, mine in key_map(cfg.depth, project_out).items()}


def _read_sizes(state: dict[str, torch.Tensor]) -> tuple[int, int, int, int, int]:
    """(dim, patch_dim, tokens, num_classes, inner) from the keys that fix them, or an error naming those keys."""
    ranks = dict(zip(_SHAPE_SOURCES, (2, 3, 2, 2)))
    missing = [k for k in _SHAPE_SOURCES if k not in state]
    bad = [f"{k} has shape {tuple(state[k].shape)}, expected {ranks[k]} dimensions" if state[k].dim() != ranks[k]
           else f"{k} has shape {tuple(state[k].shape)}, with an empty dimension"   # no CRATE has a size 0
           for k in _SHAPE_SOURCES if k in state and (state[k].dim() != ranks[k] or 0 in state[k].shape)]
    if missing or bad:
        raise BadValueError("not an official CRATE state dict, its sizes cannot be read: "
                            + "; ".join(([f"missing {', '.join(missing)}"] if missing else []) + bad))
    dim, patch_dim = state["to_patch_embedding.2.weight"].shape
    return (dim, patch_dim, state["pos_embedding"].shape[1], state["mlp_head.1.weight"].shape[0],
            state["transformer.layers.0.0.fn.qkv.weight"].shape[0])


def _check_keys(state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], heads: int) -> None:
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    misshaped = [f"{k} (expected {expected[k]}, got {tuple(state[k].shape)})"
                 for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    problems = [f"{what}: {', '.join(keys)}" for what, keys in
                (("missing", missing), ("extra", extra), ("misshaped", misshaped)) if keys]
    if problems:
        hint = (f" (the official model has no to_out only when heads == 1 and dim_head == dim; heads={heads} was "
                f"given)" if any(_TO_OUT in k for k in missing + extra) else "")
        raise BadValueError("official CRATE state dict does not match the architecture its shapes give: "
                            + "; ".join(problems) + hint)


def _square_side(n: int) -> int | None:
    side = math.isqrt(n) if n > 0 else 0
    return side if side > 0 and side * side == n else None
