"""Spectral and Frobenius measures on diagonal weights with known singular values, and against numpy."""
import math

import numpy as np
import pytest
import torch

from measures import spectral as S
from measures.context import MeasureContext, MeasureOptions
from measures.margin import MeasureUndefined
from zoo.models import build_model

TINY = dict(image_size=4, patch_size=2, channels=1, num_classes=3, dim=4, depth=1, heads=2)
# singular values of patch embed, qkv, output map, ISTA D (4x4) and head (3x4), in registration order
SINGULAR = [[2, 1, 1, 1], [3, 1, 0.5, 0.5], [1, 1, 1, 1], [4, 2, 0, 0], [0.5, 0.25, 0.25]]
SPEC_SQ = [4, 9, 1, 16, 0.25]
FRO_SQ = [7, 10.5, 4, 20, 0.375]


def diagonal_context(margin=2.0, variant="crate", singular=SINGULAR):
    """Weights diag(SINGULAR[i]); init = weights minus e1 e1^T, so every W - W0 has ||.||_2 = ||.||_F = 1."""
    m = build_model(variant, **TINY)
    init = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        for (name, p), s in zip(((n, p) for n, p in m.named_parameters() if p.ndim == 2), singular):
            p.zero_()
            p[range(len(s)), range(len(s))] = torch.tensor(s, dtype=p.dtype)
            init[name] = p.detach().clone()
            init[name][0, 0] -= 1.0
    y = torch.tensor([0, 1, 2, 0, 1])
    logits = torch.zeros(5, 3)
    logits[torch.arange(5), y] = margin                          # every margin equals `margin`
    ctx = MeasureContext(model=m, init_state=init, x=torch.zeros(5, 1, 4, 4), y=y, n_train=100)
    ctx.cache["features"] = (logits, [])
    return ctx


def test_spectral_norms_are_cached_and_exact():
    ctx = diagonal_context()
    assert list(S.spectral_sq(ctx).values()) == pytest.approx(SPEC_SQ)
    assert "spectral.spec_sq(shared=per-use)" in ctx.cache


def test_products_and_sums_in_log_form():
    ctx = diagonal_context(margin=2.0)
    log_prod_spec = math.log(4 * 9 * 1 * 16 * 0.25)          # log 144
    log_prod_fro = math.log(7 * 10.5 * 4 * 20 * 0.375)
    two_log_gamma = 2 * math.log(2.0)
    assert S.log_prod_of_spec(ctx) == pytest.approx(log_prod_spec)
    assert S.log_sum_of_spec(ctx) == pytest.approx(math.log(5) + log_prod_spec / 5)
    assert S.log_prod_of_fro(ctx) == pytest.approx(log_prod_fro)
    assert S.log_sum_of_fro(ctx) == pytest.approx(math.log(5) + log_prod_fro / 5)
    assert S.log_prod_of_spec_over_margin(ctx) == pytest.approx(log_prod_spec - two_log_gamma)
    assert S.log_sum_of_spec_over_margin(ctx) == pytest.approx(math.log(5) + (log_prod_spec - two_log_gamma) / 5)
    assert S.log_prod_of_fro_over_margin(ctx) == pytest.approx(log_prod_fro - two_log_gamma)
    assert S.log_sum_of_fro_over_margin(ctx) == pytest.approx(math.log(5) + (log_prod_fro - two_log_gamma) / 5)


def test_fro_over_spec_and_the_main_bounds():
    ctx = diagonal_context(margin=0.5)
    fro_over_spec = 7 / 4 + 10.5 / 9 + 4 / 1 + 20 / 16 + 0.375 / 0.25
    init_ratio = 1 / 4 + 1 / 9 + 1 / 1 + 1 / 16 + 1 / 0.25       # ||W - W0||_F^2 = 1 for every matrix
    base = math.log(144) - 2 * math.log(0.5)
    assert S.fro_over_spec(ctx) == pytest.approx(fro_over_spec)
    assert S.log_spec_orig_main(ctx) == pytest.approx(base + math.log(fro_over_spec))
    assert S.log_spec_init_main(ctx) == pytest.approx(base + math.log(init_ratio))
    assert S.dist_spec_init(ctx) == pytest.approx(5.0)


@pytest.mark.parametrize("shared", ["once", "per-use"])
def test_against_numpy_on_random_weights(shared):
    torch.manual_seed(0)
    m = build_model("crate-c", **TINY)
    init = {k: torch.randn_like(v) for k, v in m.state_dict().items()}
    ctx = MeasureContext(model=m, init_state=init, x=torch.zeros(2, 1, 4, 4), y=torch.zeros(2, dtype=torch.long),
                         n_train=100, options=MeasureOptions(shared_weights=shared))
    mats = {n: p.detach().double().numpy() for n, p in m.named_parameters() if p.ndim == 2}
    if shared == "per-use":       # crate-c applies W_qkv on the way in and as its output map
        mats["qkv again"] = mats["layers.0.attn.qkv.weight"]
        init["qkv again"] = init["layers.0.attn.qkv.weight"]
    assert len(ctx.path_weights()) == len(mats)
    spec = [np.linalg.norm(w, 2) ** 2 for w in mats.values()]
    fro = [np.linalg.norm(w, "fro") ** 2 for w in mats.values()]
    dist = sum(np.linalg.norm(w - init[n].double().numpy(), 2) ** 2 for n, w in mats.items())
    assert S.log_prod_of_spec(ctx) == pytest.approx(np.log(spec).sum(), rel=1e-10)
    assert S.log_prod_of_fro(ctx) == pytest.approx(np.log(fro).sum(), rel=1e-10)
    assert S.fro_over_spec(ctx) == pytest.approx(sum(f / s for f, s in zip(fro, spec)), rel=1e-10)
    assert S.dist_spec_init(ctx) == pytest.approx(dist, rel=1e-10)


@pytest.mark.parametrize("name", ["log_prod_of_spec_over_margin", "log_sum_of_spec_over_margin",
                                  "log_prod_of_fro_over_margin", "log_sum_of_fro_over_margin",
                                  "log_spec_init_main", "log_spec_orig_main"])
def test_margin_forms_are_undefined_for_a_non_positive_margin(name):
    with pytest.raises(MeasureUndefined, match=r"margin γ = -1 ≤ 0"):
        getattr(S, name)(diagonal_context(margin=-1.0))


def test_spec_init_main_is_undefined_at_initialisation():
    ctx = diagonal_context()
    ctx.init_state = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    ctx.cache.pop("init_weights", None)
    with pytest.raises(MeasureUndefined, match="equals its initial value"):
        S.log_spec_init_main(ctx)
    assert S.dist_spec_init(ctx) == 0.0


@pytest.mark.parametrize("variant", ["crate-c", "crate-n", "crate-t"])
def test_tied_qkv_counts_per_use_so_tied_variants_have_crates_d_L(variant):
    # L = 1: crate has qkv, output map, ISTA, patch embed, head = 3L + 2 = 5 matrices; a tied variant has 4
    # parameters, and per use its qkv enters twice: 5 again, with log ||W_qkv||^2 added to the product.
    no_output_map = [SINGULAR[0], SINGULAR[1], SINGULAR[3], SINGULAR[4]]   # patch embed, qkv, ISTA D, head
    crate = diagonal_context(variant="crate")
    tied = diagonal_context(variant=variant, singular=no_output_map)
    once = diagonal_context(variant=variant, singular=no_output_map)
    once.options = MeasureOptions(shared_weights="once")
    assert len(crate.path_weights()) == len(tied.path_weights()) == 5 and len(once.path_weights()) == 4
    # ||W||_2^2: patch embed 4, qkv 9, ISTA D 16, head 0.25
    assert S.log_prod_of_spec(once) == pytest.approx(math.log(4 * 9 * 16 * 0.25))
    assert S.log_prod_of_spec(tied) == pytest.approx(math.log(4 * 9 * 9 * 16 * 0.25))
    assert S.log_sum_of_spec(tied) == pytest.approx(math.log(5) + math.log(4 * 9 * 9 * 16 * 0.25) / 5)
    assert S.fro_over_spec(tied) == pytest.approx(7 / 4 + 2 * 10.5 / 9 + 20 / 16 + 0.375 / 0.25)
    assert S.dist_spec_init(tied) == pytest.approx(5.0) and S.dist_spec_init(once) == pytest.approx(4.0)


def test_a_cache_shared_between_option_sets_keeps_them_apart():
    per_use = diagonal_context(variant="crate-c", singular=[SINGULAR[0], SINGULAR[1], SINGULAR[3], SINGULAR[4]])
    once = MeasureContext(model=per_use.model, init_state=per_use.init_state, x=per_use.x, y=per_use.y,
                          n_train=100, options=MeasureOptions(shared_weights="once"), cache=per_use.cache)
    assert S.log_prod_of_spec(per_use) == pytest.approx(math.log(4 * 9 * 9 * 16 * 0.25))
    assert S.log_prod_of_spec(once) == pytest.approx(math.log(4 * 9 * 16 * 0.25))
    assert S.log_prod_of_fro(per_use) - S.log_prod_of_fro(once) == pytest.approx(math.log(10.5))
