"""zoo.models: each variant's output map is its definition, the layer is CRATE's, the counts are the paper's."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from benchmark.reference import make_optimizer
from measures.compute import evaluate_measures, make_context
from measures.context import MeasureOptions
from measures.pathnorm import path_norm_forward
import zoo.models
from zoo.data import load_dataset
from zoo.models import (ISTA, MSSA, NEEDS_SQUARE_HEADS, OUTPUT_MAPS, VARIANTS, CRATE, MemberDropout, ModelConfig,
                        OutputMap, VariantOutput, build_model, count_parameters, crate_forward, head_matmul, ista_map,
                        layer_norm, output_map, patches, softmax_last)
from zoo.train import TrainConfig, train_model


def tiny(variant="crate", **kw):
    args = dict(variant=variant, image_size=8, patch_size=4, channels=1, num_classes=10, dim=8, depth=2, heads=2)
    args.update(kw)
    return ModelConfig(**args)


def by_hand_output_map(variant: str, mssa: MSSA, s: torch.Tensor) -> torch.Tensor:
    """The output maps of SPEC's table, written out (row form: S is (B, N, K*p), W_qkv is (K*p, d))."""
    w_qkv = mssa.qkv.weight
    if variant == "crate-c":
        return s @ w_qkv
    if variant == "crate-n":
        return -(s @ w_qkv)
    if variant == "crate-t":
        return s @ w_qkv.T
    if variant == "crate-identity":
        return s
    lin = mssa.output_map.linear  # crate and crate-fix: W S + b in column form
    return s @ lin.weight.T + lin.bias


def head_dims(variant):
    # the square variants need K*p = d; the others are also checked with K*p != d so a transpose cannot hide
    return [None] if variant in NEEDS_SQUARE_HEADS else [None, 3]


CASES = [(v, p) for v in VARIANTS for p in head_dims(v)]


@pytest.mark.parametrize("variant,dim_head", CASES)
def test_output_map_is_its_definition(variant, dim_head):
    torch.manual_seed(0)
    mssa = MSSA(tiny(variant, dim_head=dim_head)).double()
    inner = mssa.config.heads * mssa.config.head_dim
    s = torch.randn(3, 5, inner, dtype=torch.float64)
    out = mssa.output_map(s, mssa.qkv.weight)
    assert out.shape == (3, 5, 8)
    torch.testing.assert_close(out, by_hand_output_map(variant, mssa, s), rtol=0, atol=1e-12)


@pytest.mark.parametrize("variant,dim_head", CASES)
def test_mssa_forward_by_hand(variant, dim_head):
    torch.manual_seed(1)
    cfg = tiny(variant, dim_head=dim_head)
    mssa = MSSA(cfg).double().eval()
    b, n, k, p = 2, 5, cfg.heads, cfg.head_dim
    x = torch.randn(b, n, cfg.dim, dtype=torch.float64)
    w = x @ mssa.qkv.weight.T                                     # (B, N, K*p) = (U^T Z)^T
    s = torch.empty(b, n, k * p, dtype=torch.float64)
    for h in range(k):
        wh = w[:, :, h * p:(h + 1) * p]                           # (B, N, p): head h
        attn = torch.softmax(wh @ wh.transpose(1, 2) * p ** -0.5, dim=-1)
        s[:, :, h * p:(h + 1) * p] = attn @ wh
    torch.testing.assert_close(mssa(x), by_hand_output_map(variant, mssa, s), rtol=0, atol=1e-12)


def test_mssa_temperature_replaces_one_over_sqrt_p():
    torch.manual_seed(2)
    cfg = tiny("crate-identity", heads=1, temperature=0.25)
    mssa = MSSA(cfg).double()
    x = torch.randn(1, 4, 8, dtype=torch.float64)
    w = x @ mssa.qkv.weight.T
    expected = torch.softmax(w @ w.transpose(1, 2) * 0.25, dim=-1) @ w
    torch.testing.assert_close(mssa(x), expected, rtol=0, atol=1e-12)


# --- crate-fix --------------------------------------------------------------------------------------------------

def test_crate_fix_starts_at_crates_init():
    """Same seed, same construction order: crate-fix is crate with its output matrix frozen at that init."""
    torch.manual_seed(0)
    a = CRATE(tiny("crate")).state_dict()
    torch.manual_seed(0)
    b = CRATE(tiny("crate-fix")).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_crate_fix_output_map_frozen_through_training():
    torch.manual_seed(0)
    model = CRATE(tiny("crate-fix", dim=8, depth=1))
    frozen = {n: p for n, p in model.named_parameters() if ".output_map." in n}
    assert sorted(frozen) == ["layers.0.attn.output_map.linear.bias", "layers.0.attn.output_map.linear.weight"]
    assert not any(p.requires_grad for p in frozen.values())
    cfg = TrainConfig(lr=1e-2, batch_size=32, max_epochs=2, warmup_epochs=0, target_ce=0.0)
    optimizer, _ = make_optimizer(model, cfg, steps_per_epoch=1)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not in_optimizer & {id(p) for p in frozen.values()}
    assert len(in_optimizer) == sum(p.requires_grad for p in model.parameters())

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = load_dataset("digits", n_train=100, n_test=50)
    metrics = train_model(model, data, cfg)
    assert metrics["status"] == "done" and metrics["steps"] == 8
    after = dict(model.named_parameters())
    for name, value in before.items():
        if name in frozen:
            assert torch.equal(after[name], value), name           # bit-identical: no grad, no weight decay
        else:
            assert not torch.equal(after[name], value), name


# --- parameter counts (paper-notes §3.6, §4.2) ------------------------------------------------------------------

def layer_params(d):
    # 2 LayerNorms + qkv (d^2) + to_out (d^2 + d) + dictionary D (d^2), with K*p = d
    return 4 * d + d * d + (d * d + d) + d * d


def formula(d, depth, image, patch, channels, classes, tied):
    patch_dim = channels * patch * patch
    n = (image // patch) ** 2
    tokenizer = 2 * patch_dim + (patch_dim * d + d) + 2 * d + d + (n + 1) * d
    head = 2 * d + d * classes + classes
    return tokenizer + depth * (layer_params(d) - (d * d + d if tied else 0)) + head


@pytest.fixture(scope="module")
def counts():
    """(total, trainable) per (variant, image, patch, dim, classes); depth 12, 3 channels, dim_head 64.
    Each model is built once per module (a 22M-parameter build takes a fraction of a second)."""
    cache = {}

    def get(variant, image, patch, dim, classes):
        key = (variant, image, patch, dim, classes)
        if key not in cache:
            model = build_model(variant, image_size=image, patch_size=patch, channels=3, num_classes=classes,
                                dim=dim, depth=12, heads=dim // 64)
            cache[key] = (count_parameters(model), count_parameters(model, trainable_only=True))
        return cache[key]
    return get


def test_crate_tiny_matches_paper_table_1(counts):
    total, trainable = counts("crate", 224, 16, 384, 1000)
    assert total == trainable == 6_090_856                          # Table 1: CRATE-Tiny 6.09M
    assert total == formula(384, 12, 224, 16, 3, 1000, tied=False)
    assert counts("crate", 224, 16, 384, 10)[0] == 5_709_706        # paper-notes §4.2: 5.710M with 10 classes


@pytest.mark.parametrize("classes", [1000, 10])
def test_variant_counts_at_crate_tiny(counts, classes):
    full = counts("crate", 224, 16, 384, classes)[0]
    saved = 12 * (384 * 384 + 384)                                  # depth * (d^2 + d): no to_out
    assert saved == 12 * 147_840
    for variant in ("crate-c", "crate-n", "crate-t", "crate-identity"):
        assert counts(variant, 224, 16, 384, classes) == (full - saved, full - saved), variant
    assert counts("crate-fix", 224, 16, 384, classes) == (full, full - saved)


@pytest.mark.parametrize("image,patch,dim,learned,tied", [
    (32, 4, 384, "5.381", "3.607"),
    (32, 4, 768, "21.379", "14.292"),
    (224, 16, 384, "5.710", "3.936"),
    (224, 16, 768, "22.035", "14.948"),
])
def test_paper_notes_4_2_counts_10_classes(counts, image, patch, dim, learned, tied):
    assert f"{counts('crate', image, patch, dim, 10)[0] / 1e6:.3f}" == learned
    assert f"{counts('crate-c', image, patch, dim, 10)[0] / 1e6:.3f}" == tied


# --- configuration errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", NEEDS_SQUARE_HEADS)
def test_square_variants_reject_kp_not_d(variant):
    with pytest.raises(ValueError, match=r"heads\*dim_head = dim; got 2\*3 = 6 != 8"):
        CRATE(tiny(variant, dim_head=3))
    CRATE(tiny("crate-c", dim_head=3))                              # the tied S W_qkv needs no square heads


def test_unknown_variant_lists_allowed_names():
    with pytest.raises(ValueError, match="crate-x") as err:
        CRATE(tiny("crate-x"))
    assert all(v in str(err.value) for v in VARIANTS)
    with pytest.raises(ValueError, match="allowed: " + ", ".join(VARIANTS)):
        VariantOutput("crate-x", 8, 8)


# --- features and subspaces -------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_return_features(variant):
    torch.manual_seed(3)
    model = CRATE(tiny(variant, dim=16, heads=4, dropout=0.1)).eval()
    x = torch.randn(5, 1, 8, 8)
    logits, feats = model(x, return_features=True)
    assert torch.equal(logits, model(x))
    assert len(feats) == 2
    assert torch.equal(feats[0]["Z_in"], model.tokenizer(x))
    for layer, f in zip(model.layers, feats):
        for key in ("Z_in", "Z_half", "Z_out"):
            assert f[key].shape == (5, 4 + 1, 16), key              # 4 patches + cls token
        assert (f["Z_out"] >= 0).all()                              # ISTA ends in a ReLU
        with torch.no_grad():
            mssa = layer.attn(layer.attn_norm(f["Z_in"]))
            z_out = layer.ista(layer.ista_norm(f["Z_half"]))
        torch.testing.assert_close(f["Z_half"] - f["Z_in"], mssa, rtol=1e-5, atol=1e-6)
        assert torch.equal(f["Z_out"], z_out)                       # no skip around ISTA
    assert torch.equal(feats[1]["Z_in"], feats[0]["Z_out"])
    # the head reads the cls token of the last layer's output
    assert torch.equal(logits, model.head(model.head_norm(feats[-1]["Z_out"][:, 0])))


def test_subspaces_are_blocks_of_qkv():
    torch.manual_seed(4)
    model = CRATE(tiny("crate", dim=8, heads=2, dim_head=3))
    u = model.subspaces()
    assert u.shape == (2, 2, 8, 3)                                   # (depth, K, d, p)
    for l, layer in enumerate(model.layers):
        w = layer.attn.qkv.weight                                    # (K*p, d)
        for k in range(2):
            assert torch.equal(u[l, k], w[k * 3:(k + 1) * 3].T)


# --- ISTA and tokenizer -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("eta,lam", [(0.1, 0.1), (0.3, 0.05)])
def test_ista_is_the_column_form_formula(eta, lam):
    torch.manual_seed(5)
    ista = ISTA(tiny(dim=6, heads=2, ista_step=eta, ista_lambda=lam)).double()
    x = torch.randn(2, 4, 6, dtype=torch.float64)
    d = ista.weight.detach()
    out = ista(x)
    for b in range(2):
        z = x[b].T.clone()                                           # (d, N): tokens as columns
        expected = F.relu(z + eta * d.T @ (z - d @ z) - eta * lam)
        torch.testing.assert_close(out[b], expected.T, rtol=0, atol=1e-12)


def test_tokenizer_patch_order_is_crates_rearrange():
    """'b c (h p1) (w p2) -> b (h w) (p1 p2 c)': patch (i, j) row-major, its pixels (p1, p2, c) channel-fastest."""
    torch.manual_seed(6)
    tok = CRATE(tiny(channels=2, patch_size=4)).tokenizer
    images = torch.randn(1, 2, 8, 8)
    rows = patches(images, tok.config.patch_size)
    assert rows.shape == (1, 4, 32)
    for i in range(2):
        for j in range(2):
            expected = [images[0, c, 4 * i + p1, 4 * j + p2] for p1 in range(4) for p2 in range(4) for c in range(2)]
            assert torch.equal(rows[0, 2 * i + j], torch.stack(expected))


# --- the one forward: a member of a stack is its own model, bit for bit ----------------------------------------

SEEDS = (0, 1, 2)


def perturbed_model(cfg, seed):
    """A CRATE moved away from its init (LayerNorm weights not 1, biases not 0), so no parameter is trivial."""
    torch.manual_seed(seed)
    model = CRATE(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def stack_params(models):
    named = [dict(m.named_parameters()) for m in models]
    return {name: torch.stack([nm[name].detach() for nm in named]) for name in named[0]}


def plain_forward(model: CRATE, x: torch.Tensor) -> torch.Tensor:
    """CRATE in eval mode written with torch's one-model ops (F.linear, F.layer_norm, x @ W): the forward as it
    was before it was written over a member axis, the oracle that stored checkpoints still give the same logits."""
    cfg = model.config
    tok = model.tokenizer
    z = tok.embed_norm(tok.patch_embed(tok.patch_norm(patches(x, cfg.patch_size))))
    z = torch.cat([tok.cls_token.expand(len(x), -1, -1), z], dim=1) + tok.pos_embedding
    for layer in model.layers:
        y = layer.attn_norm(z)
        w_qkv = layer.attn.qkv.weight
        b, n, _ = y.shape
        w = F.linear(y, w_qkv).reshape(b, n, cfg.heads, cfg.head_dim).transpose(1, 2)
        s = (softmax_last(w @ w.transpose(-1, -2) * cfg.scale) @ w).transpose(1, 2).reshape(b, n, -1)
        z = z + by_hand_output_map(cfg.variant, layer.attn, s)
        z = F.relu(layer.ista_norm(z) @ ista_map(layer.ista.weight, cfg.ista_step) - cfg.ista_step * cfg.ista_lambda)
    return model.head(model.head_norm(z[:, 0]))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("batch", [5, 300])   # 300 images x 2 heads: attention's products go through head_matmul's
def test_forward_equals_torchs_one_model_ops_bit_for_bit_gradients_included(variant, batch):   # own layouts
    model = perturbed_model(tiny(variant), 0).eval()
    x = torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    y = torch.arange(batch) % 10
    grads = []
    for forward in (model, lambda images: plain_forward(model, images)):
        logits = forward(x)
        trainable = [p for p in model.parameters() if p.requires_grad]
        grads.append((logits, torch.autograd.grad(F.cross_entropy(logits, y), trainable)))
    (a, grad_a), (b, grad_b) = grads
    assert torch.equal(a, b)
    assert all(torch.equal(ga, gb) for ga, gb in zip(grad_a, grad_b))


@pytest.mark.parametrize("variant", VARIANTS)
def test_eval_logits_of_a_stack_equal_each_models_forward(variant):
    models = [perturbed_model(tiny(variant), s).eval() for s in SEEDS]
    shared = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    own = torch.randn(3, 5, 1, 8, 8, generator=torch.Generator().manual_seed(10))      # (E, B, c, h, w)
    with torch.no_grad():
        got = crate_forward(models[0].config, stack_params(models), shared)
        assert got.shape == (3, 5, 10)
        assert torch.equal(got, torch.stack([m(shared) for m in models]))
        got = crate_forward(models[0].config, stack_params(models), own)
        assert torch.equal(got, torch.stack([m(xe) for m, xe in zip(models, own)]))
        # a stack of one (the zoo's group of one) too
        assert torch.equal(crate_forward(models[0].config, stack_params(models[:1]), shared)[0], models[0](shared))
        # 3 x 100 images x 2 heads: the stack's attention goes through head_matmul's layouts, each model's not
        many = torch.randn(100, 1, 8, 8, generator=torch.Generator().manual_seed(11))
        got = crate_forward(models[0].config, stack_params(models), many)
        assert torch.equal(got, torch.stack([m(many) for m in models]))


@pytest.mark.parametrize("n, k, m, products, own_layouts", [(5, 8, 5, 3072, True), (5, 5, 8, 3072, True),
                                                            (5, 4, 5, 100, False), (17, 8, 17, 600, False)])
def test_head_matmul_is_torchs_matmul_bit_for_bit_gradients_included(n, k, m, products, own_layouts):
    # the first two shapes are digits' attention products (laid out anew), the last two torch's own matmul (few
    # products; a product above SMALL_PRODUCT); the factors are non-contiguous views, as in mssa
    g = torch.Generator().manual_seed(0)
    a = torch.randn(products, k, n, generator=g).transpose(1, 2).reshape(2, -1, n, k).requires_grad_()
    b = torch.randn(2, products // 2, m, k, generator=g).transpose(-1, -2).requires_grad_()
    upstream = torch.randn(2, products // 2, n, m, generator=g)
    results = []
    for product in (head_matmul, torch.matmul):
        out = product(a, b)
        results.append((out, *torch.autograd.grad(out, (a, b), upstream)))
        if product is head_matmul:   # the path taken is the one this case is about
            nodes = [type(f).__name__ for f, _ in out.grad_fn.next_functions]
            assert ("_SmallMatmulBackward" in nodes) == own_layouts, nodes
    assert all(torch.equal(x, y) for x, y in zip(*results))


def test_head_matmul_under_vmap_equals_torchs_matmul_under_vmap(monkeypatch):
    # measures may take a model through torch.func: the custom Function's vmap rule must give torch's values
    model = perturbed_model(tiny("crate-c"), 0).eval()
    x = torch.randn(300, 1, 8, 8, generator=torch.Generator().manual_seed(3))   # 600 products per member
    stacked = {n: torch.stack([p.detach(), 2 * p.detach()]) for n, p in model.named_parameters()}

    def forward(p):
        return torch.func.functional_call(model, p, (x,))
    got = torch.func.vmap(forward)(stacked)
    monkeypatch.setattr(zoo.models, "SMALL_PRODUCT", 0)        # every product through torch's matmul
    assert torch.equal(got, torch.func.vmap(forward)(stacked))


def test_features_of_a_stack_are_each_models_features():
    models = [perturbed_model(tiny("crate-c"), s).eval() for s in SEEDS]
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        _, stacked = crate_forward(models[0].config, stack_params(models), x, return_features=True)
        for e, m in enumerate(models):
            _, own = m(x, return_features=True)
            for a, b in zip(stacked, own):
                assert all(torch.equal(a[k][e], b[k]) for k in ("Z_in", "Z_half", "Z_out"))


def test_functional_call_substitutes_the_parameters():
    # the measures perturb a model through functional_call: the forward must read the substituted tensors
    model = perturbed_model(tiny("crate"), 0).eval()
    other = perturbed_model(tiny("crate"), 1).eval()
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        got = torch.func.functional_call(model, dict(other.named_parameters()), (x,))
        assert torch.equal(got, other(x)) and not torch.equal(got, model(x))


def test_train_mode_dropout_masks_equal_nn_dropout_seeded_alike():
    rates = [0.0, 0.1, 0.3]
    models = [perturbed_model(tiny(dropout=p), s).train() for p, s in zip(rates, SEEDS)]
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    expected = []
    for m, s in zip(models, SEEDS):
        torch.manual_seed(s)                                     # a lone model draws from the global generator
        expected.append(m(x).detach())
    dropout = MemberDropout(rates, [torch.Generator().manual_seed(s) for s in SEEDS])
    with torch.no_grad():
        got = crate_forward(models[0].config, stack_params(models), x, dropout)
        plain = crate_forward(models[0].config, stack_params(models), x)
    for e in range(3):
        assert torch.equal(got[e], expected[e]), f"member {e} (rate {rates[e]})"
    # the check has teeth: in eval mode (no masks) the members with rate > 0 give other logits
    assert torch.equal(plain[0], got[0]) and not torch.equal(plain[2], got[2])
    # and the masks are nn.Dropout's: one site, the global generator seeded alike
    torch.manual_seed(3)
    reference = torch.nn.Dropout(0.3).train()(torch.ones(4, 7))
    torch.manual_seed(3)
    assert torch.equal(MemberDropout([0.3], [None])(torch.ones(1, 4, 7))[0], reference)


def test_a_member_with_rate_zero_draws_nothing_from_its_generator():
    generators = [torch.Generator().manual_seed(s) for s in SEEDS]
    before = [g.get_state() for g in generators]
    MemberDropout([0.0, 0.2, 0.0], generators)(torch.ones(3, 4, 5))
    assert torch.equal(generators[0].get_state(), before[0])
    assert torch.equal(generators[2].get_state(), before[2])
    assert not torch.equal(generators[1].get_state(), before[1])


def test_layer_norm_equals_functional_layer_norm_per_member():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 16, generator=g) * 3 + 1                               # (E, B, N, d)
    weight, bias = 1 + torch.randn(3, 16, generator=g), torch.randn(3, 16, generator=g)
    got = layer_norm(x, weight, bias)
    for e in range(3):
        assert torch.equal(got[e], F.layer_norm(x[e], (16,), weight[e], bias[e])), e


def test_patches_are_crates_layout_for_three_channels():
    # 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)': patch (i, j) row-major, each flattened pixel by pixel, channels inner
    images = torch.arange(2 * 3 * 8 * 12, dtype=torch.float32).reshape(2, 3, 8, 12)  # every value distinct
    got = patches(images, 4)
    assert got.shape == (2, 2 * 3, 4 * 4 * 3)
    for i in range(2):
        for j in range(3):
            block = images[:, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4]                 # (b, c, p1, p2)
            assert torch.equal(got[:, 3 * i + j], block.permute(0, 2, 3, 1).reshape(2, -1)), (i, j)


def test_patches_take_a_leading_member_axis():
    images = torch.arange(4 * 2 * 3 * 8 * 12, dtype=torch.float32).reshape(4, 2, 3, 8, 12)   # (E, B, c, h, w)
    got = patches(images, 4)
    assert got.shape == (4, 2, 6, 48)
    for e in range(4):
        assert torch.equal(got[e], patches(images[e], 4)), e


# --- the variant table: an unknown variant is an error everywhere, a new one is one entry -------------------------

def test_unknown_variant_is_an_error_everywhere():
    cfg = tiny("crate")
    model = CRATE(cfg)
    params = stack_params([model])
    x = torch.zeros(2, 1, 8, 8)
    bad = dataclasses.replace(cfg, variant="crate-x")
    for build in (lambda: bad.validate(), lambda: output_map("crate-x"), lambda: VariantOutput("crate-x", 8, 8),
                  lambda: crate_forward(bad, params, x)):            # the forward never falls back to another map
        with pytest.raises(ValueError, match="unknown variant 'crate-x'; allowed: " + ", ".join(VARIANTS)):
            build()
    with pytest.raises(ValueError, match="learned, tied or identity"):
        OutputMap("tied-twice")


def test_an_added_variant_is_one_table_entry_and_trains_and_is_measured(monkeypatch):
    """README "Add a variant": crate-nt (S -W_qkv^T) registered as one OUTPUT_MAPS entry is validated, built,
    trained by the one loop and measured (path-norm reads the same table, the noise searches the same forward)."""
    monkeypatch.setitem(OUTPUT_MAPS, "crate-nt", OutputMap("tied", sign=-1.0, transpose=True))
    with pytest.raises(ValueError, match="heads\\*dim_head = dim"):
        CRATE(tiny("crate-nt", dim_head=3))                       # square heads, derived from the entry
    torch.manual_seed(0)
    model = CRATE(tiny("crate-nt"))
    s = torch.randn(3, 5, 8)
    w_qkv = model.layers[0].attn.qkv.weight
    assert torch.equal(model.layers[0].attn.output_map(s, w_qkv), -1.0 * (s @ w_qkv.T))
    assert count_parameters(model) == count_parameters(CRATE(tiny("crate-t")))   # owns nothing
    data = load_dataset("digits", n_train=64, n_test=32)
    metrics = train_model(model, data, TrainConfig(lr=1e-2, batch_size=32, max_epochs=2, target_ce=0.0))
    assert metrics["status"] == "done" and metrics["steps"] == 4
    # path-norm squares the weights: crate-nt's equals crate-t's with the same weights (sign^2 = 1)
    twin = CRATE(tiny("crate-t"))
    twin.load_state_dict(model.state_dict())
    assert path_norm_forward(model) == path_norm_forward(twin)
    ctx = make_context(model, model.state_dict(), data, MeasureOptions(n_samples=32, mc_samples=2, search_steps=3))
    values = evaluate_measures(ctx, ["path-norm", "pacbayes-flatness", "sharpness-flatness", "log-prod-of-spec"])
    assert all(math.isfinite(v["value"]) for v in values.values()), values
    # the spectral product reads the tied count from the same entry: each W_qkv enters twice (per use), as crate-t's
    spec_sq = {n: float(torch.linalg.matrix_norm(p.detach().double(), ord=2)) ** 2
               for n, p in model.named_parameters() if p.ndim == 2}
    per_use = sum(math.log(v) * (2 if n.endswith("qkv.weight") else 1) for n, v in spec_sq.items())
    assert values["log-prod-of-spec"]["value"] == pytest.approx(per_use, rel=1e-9)
    assert values["path-norm"]["value"] == path_norm_forward(model)
