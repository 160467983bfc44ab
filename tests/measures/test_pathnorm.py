"""Path-norm: the MLP identity with brute-force path sums, rescaling invariance, and CRATE's path-norm forward
against hand computations and an independent column-form numpy mirror."""
import itertools
import math

import numpy as np
import pytest
import torch

from measures.context import MeasureContext
from measures.margin import MeasureUndefined
from measures.pathnorm import mlp_path_norm, path_norm, path_norm_forward, path_norm_over_margin
from zoo.models import VARIANTS, build_model


# ---------------------------------------------------------------------------------------------------------------
# Plain bias-free ReLU MLPs

def brute_force_path_norm(weights):
    """Σ over every input -> hidden -> ... -> output unit sequence of Π w_e²."""
    sizes = [weights[0].shape[1]] + [w.shape[0] for w in weights]
    total = 0.0
    for units in itertools.product(*(range(n) for n in sizes)):
        total += math.prod(float(w[units[i + 1], units[i]]) ** 2 for i, w in enumerate(weights))
    return total


def test_mlp_path_norm_equals_the_sum_over_all_paths():
    torch.manual_seed(0)
    weights = [torch.randn(4, 3), torch.randn(5, 4), torch.randn(2, 5)]     # 3 * 4 * 5 * 2 = 120 paths
    assert mlp_path_norm(weights) == pytest.approx(brute_force_path_norm(weights), rel=1e-12)
    assert mlp_path_norm([torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0], [1.0]])]) == 50.0   # (1+4)(9+1)


def test_mlp_path_norm_is_invariant_to_rescaling_a_hidden_unit():
    torch.manual_seed(1)
    w1, w2, w3 = (torch.randn(*shape, dtype=torch.float64) for shape in ((4, 3), (5, 4), (2, 5)))
    c = 7.5
    v1, v2 = w1.clone(), w2.clone()
    v1[2] *= c          # incoming weights of hidden unit 2
    v2[:, 2] /= c       # its outgoing weights
    x = torch.randn(10, 3, dtype=torch.float64)
    relu_net = lambda a, b, d: torch.relu(torch.relu(x @ a.T) @ b.T) @ d.T
    assert torch.allclose(relu_net(w1, w2, w3), relu_net(v1, v2, w3))          # the same function...
    assert mlp_path_norm([v1, v2, w3]) == pytest.approx(mlp_path_norm([w1, w2, w3]), rel=1e-12)   # ...same norm
    assert mlp_path_norm([v1, w2, w3]) > mlp_path_norm([w1, w2, w3])            # a one-sided change is not


# ---------------------------------------------------------------------------------------------------------------
# CRATE: hand-checkable cases

HAND = dict(image_size=2, patch_size=1, channels=1, num_classes=2, dim=2, depth=1, heads=1)


def hand_model(variant, out_weight=1.0, out_bias=0.0):
    """LN gains 1 and biases 0, cls = pos = 0, every other weight ±1 (alternating signs), ISTA η = λ = 0.1."""
    m = build_model(variant, **HAND)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif "cls_token" in name or "pos_embedding" in name or name.endswith("bias"):
                p.fill_(0.0)
            else:
                p.copy_(torch.tensor([(-1.0) ** i for i in range(p.numel())]).reshape(p.shape))
        if variant in ("crate", "crate-fix"):
            m.layers[0].attn.output_map.linear.weight.fill_(out_weight)
            m.layers[0].attn.output_map.linear.bias.fill_(out_bias)
    return m


def test_crate_c_by_hand():
    # 2x2 image, patch 1: four 1-pixel patches of value 1, N = 5 tokens with the cls row.
    # patch LN: 1; embed W^2 = [[1],[1]]: each patch token (1, 1); cls row (0, 0).
    # qkv W^2 = ones(2, 2): patch rows (2, 2), cls row (0, 0); uniform A^2 = 1/25: every S row (8/25, 8/25).
    # crate-c S W^2: every row (16/25, 16/25) = 0.64; the cls row of Z^{1/2} is 0 + 0.64.
    # ISTA on u = (0.64, 0.64) with D^2 = ones: u + 0.01 u D^2 + 0.01 u D^2T D^2 + (0.1*0.1)^2
    #   = 0.64 (1 + 0.02 + 0.04) + 1e-4 = 0.6785 per coordinate.
    # head W^2 = ones(2, 2): each logit 2 * 0.6785, sum over 2 classes = 4 * 0.6785 = 2.714.
    assert math.exp(path_norm_forward(hand_model("crate-c"))) == pytest.approx(2.714, rel=1e-12)
    assert math.exp(path_norm_forward(hand_model("crate-n"))) == pytest.approx(2.714, rel=1e-12)


def test_crate_learned_output_by_hand():
    # as above up to S = 8/25 = 0.32 per entry; output Linear W = ones(2, 2), b = (0.5, 0.5):
    # each coordinate 2 * 0.32 * 1 + 0.25 = 0.89; ISTA 0.89 * 1.06 + 1e-4 = 0.9435; logits sum 4 * 0.9435 = 3.774
    assert math.exp(path_norm_forward(hand_model("crate", 1.0, 0.5))) == pytest.approx(3.774, rel=1e-12)
    # self-attention only (A = I): the cls row never sees a patch, S_cls = 0, so only the biases remain:
    # cls row of Z^{1/2} = 0.25; ISTA 0.25 * 1.06 + 1e-4 = 0.2651; logits sum 4 * 0.2651 = 1.0604
    assert math.exp(path_norm_forward(hand_model("crate", 1.0, 0.5), tokens="self")) == pytest.approx(1.0604)


# ---------------------------------------------------------------------------------------------------------------
# CRATE: an independent mirror in the column form of the formulas (tokens are columns), without rescaling

def numpy_path_norm(model, uniform=True):
    cfg = model.config
    P = {name: p.detach().double().numpy() ** 2 for name, p in model.named_parameters()}
    d, n = cfg.dim, cfg.num_patches
    N = n + 1
    eta, lam = cfg.ista_step, cfg.ista_lambda

    def ln(Z, prefix):      # diag(g^2) Z + b^2
        return P[prefix + ".weight"][:, None] * Z + P[prefix + ".bias"][:, None]

    X = np.ones((cfg.channels * cfg.patch_size ** 2, n))
    X = ln(P["tokenizer.patch_embed.weight"] @ ln(X, "tokenizer.patch_norm")
           + P["tokenizer.patch_embed.bias"][:, None], "tokenizer.embed_norm")
    Z = np.concatenate([P["tokenizer.cls_token"].reshape(d, 1), X], axis=1)
    Z = Z + P["tokenizer.pos_embedding"].reshape(N, d).T
    A_sq = np.full((N, N), 1.0 / N ** 2) if uniform else np.eye(N)
    for l in range(cfg.depth):
        pre = f"layers.{l}."
        Ut_sq = P[pre + "attn.qkv.weight"]                  # (U^T)^{o2}, (K p, d)
        S = (Ut_sq @ ln(Z, pre + "attn_norm")) @ A_sq.T     # (K p, N)
        if cfg.variant in ("crate", "crate-fix"):
            out = P[pre + "attn.output_map.linear.weight"] @ S + P[pre + "attn.output_map.linear.bias"][:, None]
        elif cfg.variant in ("crate-c", "crate-n"):         # U S, sign^2 = 1
            out = Ut_sq.T @ S
        elif cfg.variant == "crate-t":                      # U^T S
            out = Ut_sq @ S
        else:
            out = S
        Y = ln(Z + out, pre + "ista_norm")
        D_sq = P[pre + "ista.weight"]
        Z = Y + eta ** 2 * D_sq.T @ Y + eta ** 2 * D_sq.T @ D_sq @ Y + (eta * lam) ** 2
    z = ln(Z[:, :1], "head_norm")
    return float((P["head.weight"] @ z + P["head.bias"][:, None]).sum())


def random_model(variant, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(image_size=4, patch_size=2, channels=2, num_classes=3, dim=8, depth=2, heads=2)
    cfg.update(kw)
    m = build_model(variant, **cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))               # non-trivial LN gains/biases, cls, pos, biases
    return m


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("uniform", [True, False])
def test_matches_the_column_form_mirror(variant, uniform):
    m = random_model(variant)
    got = path_norm_forward(m, tokens="uniform" if uniform else "self")
    assert got == pytest.approx(math.log(numpy_path_norm(m, uniform)), rel=1e-12)


def test_crate_n_equals_crate_c():
    c = random_model("crate-c")
    n = build_model("crate-n", **{k: getattr(c.config, k) for k in
                                  ("image_size", "patch_size", "channels", "num_classes", "dim", "depth", "heads")})
    n.load_state_dict(c.state_dict())
    assert path_norm_forward(n) == path_norm_forward(c)


@pytest.mark.parametrize("variant", ["crate", "crate-c", "crate-t", "crate-fix", "crate-identity"])
def test_grows_with_every_weights_magnitude_and_ignores_its_sign(variant):
    m = random_model(variant, seed=3, depth=1)
    base = path_norm_forward(m)
    for name, p in m.named_parameters():
        with torch.no_grad():
            saved = p.clone()
            p.mul_(-1.0)
            flipped = path_norm_forward(m)
            p.mul_(-1.5)
            grown = path_norm_forward(m)
            p.copy_(saved)
        assert flipped == pytest.approx(base, rel=1e-12), name
        assert grown > base, name


def test_does_not_depend_on_data_and_leaves_the_model_unchanged():
    m = random_model("crate")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    grads = {k: p.requires_grad for k, p in m.named_parameters()}
    values = []
    for seed in (0, 1):
        g = torch.Generator().manual_seed(seed)
        ctx = MeasureContext(model=m, init_state=before, x=torch.randn(6, 2, 4, 4, generator=g),
                             y=torch.randint(0, 3, (6,), generator=g), n_train=100)
        values.append(path_norm(ctx))
    assert values[0] == values[1]
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    assert grads == {k: p.requires_grad for k, p in m.named_parameters()}
    assert all(p.dtype == torch.float32 for p in m.parameters())


def test_deep_models_do_not_overflow():
    m = random_model("crate", depth=12, dim=16, heads=4)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(1000.0)
    value = path_norm_forward(m)
    assert math.isfinite(value) and value > math.log(torch.finfo(torch.float64).max)   # > 709.8
    with np.errstate(over="ignore", invalid="ignore"):
        assert not math.isfinite(numpy_path_norm(m))                                   # the unscaled forward overflows


def test_tiny_path_norms_do_not_underflow():
    # weights x 1e-8, exactly-zero biases (as LayerNorm's at init) and no ISTA threshold (a constant (eta lambda)^2
    # bias would keep every layer's output >= 1e-4): the value is far below float64's range
    m = random_model("crate-c", depth=12, dim=16, heads=4, ista_lambda=0.0)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(1e-8 * p) if name.endswith("weight") or "qkv" in name else p.zero_()
    value = path_norm_forward(m)
    assert math.isfinite(value) and value < math.log(torch.finfo(torch.float64).tiny)   # < -708.4
    with torch.no_grad():
        m.head.weight.mul_(2.0)
    assert path_norm_forward(m) == pytest.approx(value + math.log(4.0), rel=1e-12)      # head is the last map


def test_over_margin_is_log_path_norm_minus_two_log_gamma():
    m = random_model("crate-c", num_classes=3)
    y = torch.tensor([0, 1, 2, 0, 1])
    ctx = MeasureContext(model=m, init_state=m.state_dict(), x=torch.zeros(5, 2, 4, 4), y=y, n_train=100)
    logits = torch.zeros(5, 3)
    logits[torch.arange(5), y] = 0.5
    ctx.cache["features"] = (logits, [])
    assert path_norm_over_margin(ctx) == pytest.approx(path_norm_forward(m) - 2 * math.log(0.5))
    logits[torch.arange(5), y] = -0.5
    ctx.cache.pop("margin.gamma")
    with pytest.raises(MeasureUndefined, match="≤ 0"):
        path_norm_over_margin(ctx)


# ---------------------------------------------------------------------------------------------------------------
# The scale-invariant LayerNorm rule

def test_normalized_rule_by_hand():
    # Every LN divides each token by its feature mean (then gain 1, bias 0): patches (1), embedded (1, 1);
    # qkv: (2, 2); uniform A^2: S rows (8/25, 8/25); crate-c: (0.64, 0.64); Z^{1/2}: cls (0.64, 0.64), patches
    # (1.64, 1.64); the ISTA LN maps both to (1, 1); ISTA: 1 + 0.02 + 0.04 + 1e-4 = 1.0601 per coordinate; the head
    # LN maps the cls row to (1, 1); head W^2 = ones: logits (2, 2), sum 4.
    assert math.exp(path_norm_forward(hand_model("crate-c"), layer_norm="normalized")) == pytest.approx(4.0)


@pytest.mark.parametrize("variant", ["crate", "crate-c"])
def test_normalized_rule_ignores_the_scale_of_maps_feeding_a_layer_norm_and_affine_does_not(variant):
    torch.manual_seed(0)
    m = build_model(variant, image_size=8, patch_size=4, channels=1, num_classes=10, dim=16, depth=2, heads=2)
    x = torch.randn(4, 1, 8, 8)
    before = {rule: path_norm_forward(m, layer_norm=rule) for rule in ("affine", "normalized")}
    logits = m.eval()(x)
    with torch.no_grad():                               # the patch embedding feeds embed_norm, a LayerNorm
        m.tokenizer.patch_embed.weight.mul_(10.0)
        m.tokenizer.patch_embed.bias.mul_(10.0)
    assert torch.allclose(m(x), logits, atol=1e-4)      # the function barely changes (LN's eps only)...
    assert path_norm_forward(m, layer_norm="normalized") == pytest.approx(before["normalized"], rel=1e-12)
    assert path_norm_forward(m, layer_norm="affine") > before["affine"] + 0.5    # ...the affine rule grows


def test_unknown_layer_norm_rule_is_named():
    with pytest.raises(ValueError, match="layer_norm must be one of affine, normalized"):
        path_norm_forward(hand_model("crate"), layer_norm="batch")
