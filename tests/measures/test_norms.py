"""Norm measures on weights with hand-known Frobenius norms; the weight-matrix rule; #params of frozen maps."""
import math

import pytest
import torch

from measures.context import MeasureContext
from measures.norms import fro_dist, l2, l2_dist_init, num_params, param_norm
from zoo.models import build_model

TINY = dict(image_size=4, patch_size=2, channels=1, num_classes=3, dim=4, depth=1, heads=2)


def scaled_eye_context(variant="crate"):
    """Matrix i (in registration order) is (i+1)·I (rectangular), its init (i+1)·I/2, so everything is by hand."""
    m = build_model(variant, **TINY)
    init = {k: v.clone() for k, v in m.state_dict().items()}
    sizes = []
    with torch.no_grad():
        for i, (name, p) in enumerate((n, p) for n, p in m.named_parameters() if p.ndim == 2):
            p.copy_((i + 1) * torch.eye(*p.shape))
            init[name] = p.detach().clone() / 2
            sizes.append((i + 1, min(p.shape)))
    ctx = MeasureContext(model=m, init_state=init, x=torch.zeros(2, 1, 4, 4), y=torch.zeros(2, dtype=torch.long),
                         n_train=100)
    return ctx, sizes


def test_weight_matrices_are_qkv_output_ista_embedding_and_head():
    ctx, _ = scaled_eye_context()
    assert sorted(ctx.weights()) == sorted([
        "tokenizer.patch_embed.weight", "layers.0.attn.qkv.weight", "layers.0.attn.output_map.linear.weight",
        "layers.0.ista.weight", "head.weight"])


def test_norms_of_scaled_identities():
    ctx, sizes = scaled_eye_context()
    # ||c I_{m x n}||_F^2 = c^2 min(m, n); the five matrices are 4x4 (patch embed), 4x4, 4x4, 4x4, 3x4 (head)
    assert sizes == [(1, 4), (2, 4), (3, 4), (4, 4), (5, 3)]
    total = 1 * 4 + 4 * 4 + 9 * 4 + 16 * 4 + 25 * 3           # 195
    assert param_norm(ctx) == pytest.approx(total)
    assert l2(ctx) == pytest.approx(math.sqrt(total))
    # W - W0 = W / 2
    assert fro_dist(ctx) == pytest.approx(total / 4)
    assert l2_dist_init(ctx) == pytest.approx(math.sqrt(total) / 2)


def test_norms_match_numpy_on_random_weights():
    m = build_model("crate-t", **TINY)
    init = {k: torch.randn_like(v) for k, v in m.state_dict().items()}
    ctx = MeasureContext(model=m, init_state=init, x=torch.zeros(2, 1, 4, 4), y=torch.zeros(2, dtype=torch.long),
                         n_train=100)
    mats = {n: p.detach().double().numpy() for n, p in m.named_parameters() if p.ndim == 2}
    expected = sum((w ** 2).sum() for w in mats.values())
    dist = sum(((w - init[n].double().numpy()) ** 2).sum() for n, w in mats.items())
    assert param_norm(ctx) == pytest.approx(expected, rel=1e-12)
    assert fro_dist(ctx) == pytest.approx(dist, rel=1e-12)
    assert l2_dist_init(ctx) == pytest.approx(math.sqrt(dist), rel=1e-12)


def test_num_params_counts_only_trainable_parameters():
    # patch LN 8, patch embed 16+4, embed LN 8, cls 4, pos 5*4, attn LN 8, qkv 16, ISTA LN 8, D 16, head LN 8,
    # head 12+3 = 131; crate adds its output map 16+4 = 151; crate-fix's frozen map is not counted
    counts = {}
    for variant in ("crate", "crate-fix", "crate-c", "crate-identity"):
        m = build_model(variant, **TINY)
        ctx = MeasureContext(model=m, init_state=m.state_dict(), x=torch.zeros(1, 1, 4, 4),
                             y=torch.zeros(1, dtype=torch.long), n_train=10)
        counts[variant] = num_params(ctx)
    assert counts == {"crate": 151, "crate-fix": 131, "crate-c": 131, "crate-identity": 131}


def test_frozen_output_map_enters_the_norms_but_not_the_distance():
    ctx, _ = scaled_eye_context("crate-fix")
    frozen = "layers.0.attn.output_map.linear.weight"            # matrix 3 = 3·I, never trained
    ctx.init_state[frozen] = ctx.model.get_parameter(frozen).detach().clone()
    ctx.cache.clear()
    assert param_norm(ctx) == pytest.approx(195)
    assert fro_dist(ctx) == pytest.approx((195 - 9 * 4) / 4)
