"""zoo.official: a state dict in the official CRATE layout loads into our model and computes the official forward.

The oracle below is Ma-Lab-Berkeley/CRATE's model/crate.py written out from its equations without einops or our
code: the patch rearrange by explicit indexing, PreNorm, the shared-qkv attention, to_out, the ISTA FeedForward
exactly as it calls F.linear, cls pooling and mlp_head.
"""
import re

import pytest
import torch
import torch.nn.functional as F

from zoo.errors import BadValueError, MissingInputError
from zoo.models import build_model
from zoo.official import (OFFICIAL_ISTA_LAMBDA, OFFICIAL_ISTA_STEP, crate_from_official, load_official_checkpoint,
                          official_state_dict)
from zoo.store import StoreError


def official_layout(*, depth, heads, dim_head, dim, channels, patch, side, classes, to_out=True, seed=0):
    """Random tensors under the official names and shapes (distinct values everywhere, so a key mapped to the
    wrong parameter changes the logits)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.5):
        return scale * torch.randn(*shape, generator=g)

    patch_dim, inner = channels * patch * patch, heads * dim_head
    sd = {
        "to_patch_embedding.1.weight": 1 + rand(patch_dim), "to_patch_embedding.1.bias": rand(patch_dim),
        "to_patch_embedding.2.weight": rand(dim, patch_dim), "to_patch_embedding.2.bias": rand(dim),
        "to_patch_embedding.3.weight": 1 + rand(dim), "to_patch_embedding.3.bias": rand(dim),
        "pos_embedding": rand(1, side * side + 1, dim, scale=1.0), "cls_token": rand(1, 1, dim, scale=1.0),
        "mlp_head.0.weight": 1 + rand(dim), "mlp_head.0.bias": rand(dim),
        "mlp_head.1.weight": rand(classes, dim), "mlp_head.1.bias": rand(classes),
    }
    for i in range(depth):
        pre = f"transformer.layers.{i}"
        sd.update({f"{pre}.0.norm.weight": 1 + rand(dim), f"{pre}.0.norm.bias": rand(dim),
                   f"{pre}.0.fn.qkv.weight": rand(inner, dim),
                   f"{pre}.1.norm.weight": 1 + rand(dim), f"{pre}.1.norm.bias": rand(dim),
                   f"{pre}.1.fn.weight": rand(dim, dim, scale=0.3)})
        if to_out:
            sd.update({f"{pre}.0.fn.to_out.0.weight": rand(dim, inner), f"{pre}.0.fn.to_out.0.bias": rand(dim)})
    return sd


def official_patches(img, patch):
    """'b c (h p1) (w p2) -> b (h w) (p1 p2 c)' entry by entry: token h*W+w, feature (p1*patch + p2)*C + c."""
    b, c, hh, ww = img.shape
    hp, wp = hh // patch, ww // patch
    out = torch.empty(b, hp * wp, patch * patch * c)
    for h in range(hp):
        for w in range(wp):
            for p1 in range(patch):
                for p2 in range(patch):
                    for ch in range(c):
                        out[:, h * wp + w, (p1 * patch + p2) * c + ch] = img[:, ch, h * patch + p1, w * patch + p2]
    return out


def official_forward(sd, img, *, heads, patch, step=0.1, lambd=0.1):
    def ln(x, key):
        return F.layer_norm(x, x.shape[-1:], sd[f"{key}.weight"], sd[f"{key}.bias"])

    x = official_patches(img, patch)
    x = ln(F.linear(ln(x, "to_patch_embedding.1"), sd["to_patch_embedding.2.weight"],
                    sd["to_patch_embedding.2.bias"]), "to_patch_embedding.3")
    b, n, _ = x.shape
    x = torch.cat([sd["cls_token"].expand(b, 1, -1), x], dim=1) + sd["pos_embedding"][:, :n + 1]
    depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("transformer."))
    for i in range(depth):
        pre = f"transformer.layers.{i}"
        w = F.linear(ln(x, f"{pre}.0.norm"), sd[f"{pre}.0.fn.qkv.weight"])     # b n (h d)
        dim_head = w.shape[-1] // heads
        w = w.reshape(b, n + 1, heads, dim_head).permute(0, 2, 1, 3)           # b h n d
        attn = torch.softmax(w @ w.transpose(-1, -2) * dim_head ** -0.5, dim=-1)
        out = (attn @ w).permute(0, 2, 1, 3).reshape(b, n + 1, heads * dim_head)  # b n (h d)
        if f"{pre}.0.fn.to_out.0.weight" in sd:
            out = F.linear(out, sd[f"{pre}.0.fn.to_out.0.weight"], sd[f"{pre}.0.fn.to_out.0.bias"])
        grad_x = out + x
        y, d = ln(grad_x, f"{pre}.1.norm"), sd[f"{pre}.1.fn.weight"]
        x1 = F.linear(y, d, bias=None)
        grad_1 = F.linear(x1, d.t(), bias=None)
        grad_2 = F.linear(y, d.t(), bias=None)
        x = F.relu(y + step * (grad_2 - grad_1) - step * lambd)
    return F.linear(ln(x[:, 0], "mlp_head.0"), sd["mlp_head.1.weight"], sd["mlp_head.1.bias"])


# depth, heads, dim_head, dim, channels, patch, side (patches per image side), classes
CASES = [
    (1, 1, 5, 8, 1, 2, 2, 3),    # one head whose size is not dim: the official model keeps to_out
    (2, 2, 4, 8, 3, 2, 3, 10),   # K*p = d, RGB
    (3, 4, 5, 12, 2, 3, 2, 4),   # K*p = 20 != d = 12, two channels, 3x3 patches
]


@pytest.mark.parametrize("depth,heads,dim_head,dim,channels,patch,side,classes", CASES)
def test_logits_equal_the_official_forward(depth, heads, dim_head, dim, channels, patch, side, classes):
    sd = official_layout(depth=depth, heads=heads, dim_head=dim_head, dim=dim, channels=channels, patch=patch,
                         side=side, classes=classes)
    model = crate_from_official(sd, heads=heads, channels=channels)
    img = torch.randn(3, channels, side * patch, side * patch, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = official_forward(sd, img, heads=heads, patch=patch)
        got = model(img)
    assert not model.training
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_shapes_give_the_architecture():
    sd = official_layout(depth=3, heads=4, dim_head=5, dim=12, channels=2, patch=3, side=4, classes=7)
    cfg = crate_from_official(sd, heads=4, channels=2).config
    assert (cfg.variant, cfg.depth, cfg.dim, cfg.heads, cfg.head_dim, cfg.num_classes) == ("crate", 3, 12, 4, 5, 7)
    assert (cfg.channels, cfg.patch_size, cfg.image_size, cfg.num_patches) == (2, 3, 12, 16)
    assert (cfg.ista_step, cfg.ista_lambda) == (OFFICIAL_ISTA_STEP, OFFICIAL_ISTA_LAMBDA) == (0.1, 0.1)
    assert cfg.dropout == 0.0


def test_attention_scale_and_ista_constants_are_the_official_ones():
    sd = official_layout(depth=2, heads=4, dim_head=5, dim=12, channels=1, patch=2, side=2, classes=3)
    model = crate_from_official(sd, heads=4, channels=1)
    assert model.config.scale == 5 ** -0.5                                      # Attention.scale = dim_head ** -0.5
    assert (model.config.ista_step, model.config.ista_lambda) == (0.1, 0.1)     # FeedForward step_size, lambd
    # the official `ista` argument is passed through; the logits follow it
    img = torch.randn(2, 1, 4, 4)
    with torch.no_grad():
        got = crate_from_official(sd, heads=4, channels=1, ista_step=0.3)(img)
        torch.testing.assert_close(got, official_forward(sd, img, heads=4, patch=2, step=0.3), rtol=1e-5, atol=1e-5)


def test_one_head_of_size_dim_has_no_output_projection_and_is_crate_identity():
    sd = official_layout(depth=2, heads=1, dim_head=8, dim=8, channels=1, patch=2, side=2, classes=3, to_out=False)
    model = crate_from_official(sd, heads=1, channels=1)
    assert model.config.variant == "crate-identity"
    img = torch.randn(2, 1, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(model(img), official_forward(sd, img, heads=1, patch=2), rtol=1e-5, atol=1e-5)
    assert official_state_dict(model).keys() == sd.keys()


def test_checkpoint_nesting_and_dataparallel_prefix_are_unwrapped():
    sd = official_layout(depth=2, heads=2, dim_head=4, dim=8, channels=1, patch=2, side=2, classes=3)
    img = torch.randn(2, 1, 4, 4)
    reference = crate_from_official(sd, heads=2, channels=1)(img)
    wrapped = {f"module.{k}": v for k, v in sd.items()}
    for checkpoint in ({"model": sd, "optimizer": {}}, {"state_dict": wrapped, "epoch": 3, "arch": "CRATE_tiny"},
                       wrapped):
        torch.testing.assert_close(crate_from_official(checkpoint, heads=2, channels=1)(img), reference,
                                   rtol=0, atol=0)


def test_missing_extra_and_misshaped_keys_are_all_named_in_one_error():
    sd = official_layout(depth=2, heads=2, dim_head=4, dim=8, channels=1, patch=2, side=2, classes=3)
    del sd["transformer.layers.1.1.fn.weight"], sd["mlp_head.0.bias"]
    sd["transformer.layers.0.0.fn.attn.bias"] = torch.zeros(8)
    sd["transformer.layers.1.0.norm.weight"] = torch.ones(9)
    sd["cls_token"] = torch.zeros(1, 2, 8)
    with pytest.raises(BadValueError) as err:
        crate_from_official(sd, heads=2, channels=1)
    msg = str(err.value)
    assert "missing: mlp_head.0.bias, transformer.layers.1.1.fn.weight" in msg
    assert "extra: transformer.layers.0.0.fn.attn.bias" in msg
    assert "transformer.layers.1.0.norm.weight (expected (8,), got (9,))" in msg
    assert "cls_token (expected (1, 1, 8), got (1, 2, 8))" in msg


def test_a_skipped_layer_index_reports_that_layers_keys_missing():
    sd = official_layout(depth=3, heads=2, dim_head=4, dim=8, channels=1, patch=2, side=2, classes=3)
    sd = {k: v for k, v in sd.items() if not k.startswith("transformer.layers.1.")}
    with pytest.raises(BadValueError, match=r"missing: transformer\.layers\.1\.0\.norm\.weight, "):
        crate_from_official(sd, heads=2, channels=1)


def test_output_projection_present_or_absent_must_match_heads():
    with_out = official_layout(depth=1, heads=1, dim_head=8, dim=8, channels=1, patch=2, side=2, classes=3)
    with pytest.raises(BadValueError, match=r"extra: transformer\.layers\.0\.0\.fn\.to_out\.0\.weight.*no to_out"):
        crate_from_official(with_out, heads=1, channels=1)
    without = official_layout(depth=1, heads=2, dim_head=4, dim=8, channels=1, patch=2, side=2, classes=3,
                              to_out=False)
    with pytest.raises(BadValueError, match=r"missing: transformer\.layers\.0\.0\.fn\.to_out\.0\.weight"):
        crate_from_official(without, heads=2, channels=1)


def test_sizes_that_give_no_square_patch_or_image_are_named():
    sd = official_layout(depth=1, heads=2, dim_head=4, dim=8, channels=3, patch=2, side=2, classes=3)
    with pytest.raises(BadValueError, match=r"patch_dim 12 .*channels=2"):
        crate_from_official(sd, heads=2, channels=2)          # 12 = 2 * 6: no square patch
    with pytest.raises(BadValueError, match=r"patch_dim 12 .*channels=1"):
        crate_from_official(sd, heads=2, channels=1)          # 12 is not a square
    sd["pos_embedding"] = torch.zeros(1, 13, 8)               # 12 patches: no integer image side
    with pytest.raises(BadValueError, match=r"pos_embedding has 13 rows .*12 is not a square"):
        crate_from_official(sd, heads=2, channels=3)
    with pytest.raises(BadValueError, match=r"qkv\.weight has 8 rows .*heads=3"):
        crate_from_official(sd, heads=3, channels=3)


@pytest.mark.parametrize("key, shape", [("mlp_head.1.weight", (0, 8)),
                                        ("transformer.layers.0.0.fn.qkv.weight", (0, 8))])
def test_an_empty_size_is_bad_input_not_a_crash(key, shape):
    """Zero classes or a zero-row qkv gave a bare ValueError / ZeroDivisionError (exit 3, "a bug") before."""
    sd = official_layout(depth=1, heads=2, dim_head=4, dim=8, channels=1, patch=2, side=2, classes=3)
    sd[key] = torch.zeros(shape)
    with pytest.raises(BadValueError, match=rf"{key.replace('.', '[.]')} has shape {re.escape(str(shape))}, with an "
                                            rf"empty dimension"):
        crate_from_official(sd, heads=2, channels=1)


def test_bad_arguments_and_non_state_dicts_are_refused():
    sd = official_layout(depth=1, heads=2, dim_head=4, dim=8, channels=1, patch=2, side=2, classes=3)
    for kwargs, name in (({"heads": 0}, "heads"), ({"heads": True}, "heads"), ({"heads": 2, "channels": 0},
                                                                                "channels"),
                         ({"heads": 2, "ista_step": -0.1}, "ista_step")):
        with pytest.raises(BadValueError, match=name):
            crate_from_official(sd, **{"channels": 1, **kwargs})
    with pytest.raises(BadValueError, match="missing to_patch_embedding.2.weight, pos_embedding"):
        crate_from_official({"model": {"weight": torch.zeros(2)}}, heads=2)
    with pytest.raises(BadValueError, match=r"'epoch' \(int\)"):
        crate_from_official({**sd, "epoch": 3}, heads=2, channels=1)
    with pytest.raises(BadValueError, match="dict of tensors, got list"):
        crate_from_official([sd], heads=2)


def test_round_trip_through_the_official_layout():
    sd = official_layout(depth=2, heads=2, dim_head=5, dim=8, channels=3, patch=2, side=2, classes=4)
    back = official_state_dict(crate_from_official(sd, heads=2))
    assert back.keys() == sd.keys()
    for key in sd:
        assert torch.equal(back[key], sd[key]), key
    ours = build_model("crate", image_size=6, patch_size=3, channels=2, num_classes=5, dim=12, depth=2, heads=3)
    img = torch.randn(2, 2, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(crate_from_official(official_state_dict(ours), heads=3, channels=2)(img),
                                   ours.eval()(img), rtol=0, atol=0)
    # the ISTA step is not in a state dict: it goes back in as the official `ista` argument
    ours = build_model("crate", image_size=4, patch_size=2, channels=1, num_classes=3, dim=8, depth=2, heads=2,
                       ista_step=0.3).eval()
    img = torch.randn(2, 1, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(crate_from_official(official_state_dict(ours), heads=2, channels=1,
                                                       ista_step=0.3)(img), ours(img), rtol=0, atol=0)


def test_variants_without_an_official_layout_are_refused():
    for variant in ("crate-c", "crate-t", "crate-identity"):
        model = build_model(variant, image_size=4, patch_size=2, channels=1, num_classes=3, dim=8, depth=1,
                            heads=2)
        with pytest.raises(BadValueError, match=variant):
            official_state_dict(model)
    model = build_model("crate", image_size=4, patch_size=2, channels=1, num_classes=3, dim=8, depth=1, heads=2,
                        ista_lambda=0.2)
    with pytest.raises(BadValueError, match="ista_lambda=0.2"):
        official_state_dict(model)


def test_checkpoint_files_are_read_safely(tmp_path):
    sd = official_layout(depth=1, heads=2, dim_head=4, dim=8, channels=1, patch=2, side=2, classes=3)
    torch.save({"model": sd, "epoch": 7}, tmp_path / "crate.pth")
    img = torch.randn(2, 1, 4, 4)
    torch.testing.assert_close(load_official_checkpoint(tmp_path / "crate.pth", heads=2, channels=1)(img),
                               crate_from_official(sd, heads=2, channels=1)(img), rtol=0, atol=0)
    torch.save({"model": sd, "args": Unpicklable()}, tmp_path / "evil.pth")
    with pytest.raises(StoreError, match="evil.pth: refused to load"):
        load_official_checkpoint(tmp_path / "evil.pth", heads=2, channels=1)
    with pytest.raises(MissingInputError, match="absent.pth"):
        load_official_checkpoint(tmp_path / "absent.pth", heads=2, channels=1)


class Unpicklable:
    """An object only full unpickling could rebuild (like an argparse.Namespace saved in a checkpoint)."""
