"""zoo.stacked: E members' forward pass at once equals each CRATE's own forward, bit for bit, dropout included."""
import pytest
import torch
import torch.nn.functional as F

from zoo.models import VARIANTS, CRATE, ModelConfig, Tokenizer
from zoo.stacked import StackedDropout, layer_norm, patches, stacked_logits

SEEDS = (0, 1, 2)


def tiny(variant="crate", dropout=0.0, **kw):
    args = dict(variant=variant, image_size=8, patch_size=4, channels=1, num_classes=10, dim=8, depth=2,
                heads=2, dropout=dropout)
    args.update(kw)
    return ModelConfig(**args)


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


@pytest.mark.parametrize("variant", VARIANTS)
def test_eval_logits_equal_each_models_forward_on_a_shared_batch(variant):
    models = [perturbed_model(tiny(variant), s).eval() for s in SEEDS]
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        expected = torch.stack([m(x) for m in models])
        got = stacked_logits(models[0].config, stack_params(models), x)
    assert got.shape == (3, 5, 10)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("variant", VARIANTS)
def test_eval_logits_equal_each_models_forward_on_its_own_batch(variant):
    models = [perturbed_model(tiny(variant), s).eval() for s in SEEDS]
    x = torch.randn(3, 5, 1, 8, 8, generator=torch.Generator().manual_seed(9))      # (E, B, c, h, w)
    with torch.no_grad():
        expected = torch.stack([m(xe) for m, xe in zip(models, x)])
        got = stacked_logits(models[0].config, stack_params(models), x)
    assert torch.equal(got, expected)


def test_train_mode_dropout_masks_equal_nn_dropout_seeded_alike():
    rates = [0.0, 0.1, 0.3]
    models = [perturbed_model(tiny(dropout=p), s).train() for p, s in zip(rates, SEEDS)]
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    expected = []
    for m, s in zip(models, SEEDS):
        torch.manual_seed(s)                                     # nn.Dropout draws from the global generator
        expected.append(m(x).detach())
    dropout = StackedDropout(rates, [torch.Generator().manual_seed(s) for s in SEEDS])
    with torch.no_grad():
        got = stacked_logits(models[0].config, stack_params(models), x, dropout)
    for e in range(3):
        assert torch.equal(got[e], expected[e]), f"member {e} (rate {rates[e]})"
    # the check has teeth: in eval mode (no masks) the members with rate > 0 give other logits
    with torch.no_grad():
        plain = stacked_logits(models[0].config, stack_params(models), x)
    assert torch.equal(plain[0], got[0]) and not torch.equal(plain[2], got[2])


def test_a_member_with_rate_zero_draws_nothing_from_its_generator():
    generators = [torch.Generator().manual_seed(s) for s in SEEDS]
    before = [g.get_state() for g in generators]
    StackedDropout([0.0, 0.2, 0.0], generators)(torch.ones(3, 4, 5))
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
    tokenizer = Tokenizer(tiny(channels=3))
    images = torch.arange(4 * 2 * 3 * 8 * 12, dtype=torch.float32).reshape(4, 2, 3, 8, 12)   # (E, B, c, h, w)
    got = patches(images, 4)
    assert got.shape == (4, 2, 6, 48)
    for e in range(4):
        assert torch.equal(got[e], tokenizer.patches(images[e])), e
