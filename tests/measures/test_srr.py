"""Coding rates against numpy's slogdet on the full forms, known values, invariances, and the SRR measures."""
import math

import numpy as np
import pytest
import torch

from measures import srr
from measures.context import MeasureContext, MeasureOptions
from measures.registry import get_measure
from zoo.models import build_model


def full_rate(z: np.ndarray, eps_sq: float) -> float:
    """R of one (N, d) sample from the d x d form, 1/2 logdet(I_d + d/(N eps^2) Z^T Z)."""
    n, d = z.shape
    return 0.5 * np.linalg.slogdet(np.eye(d) + d / (n * eps_sq) * z.T @ z)[1]


def full_rate_subspaces(z: np.ndarray, u: np.ndarray, eps_sq: float) -> float:
    """R^c of one (N, d) sample by an explicit loop over heads, each in its p x p form."""
    n = z.shape[0]
    total = 0.0
    for u_k in u:                                 # (d, p)
        w = z @ u_k                               # (N, p)
        p = w.shape[1]
        total += 0.5 * np.linalg.slogdet(np.eye(p) + p / (n * eps_sq) * w.T @ w)[1]
    return total


def random_orthogonal(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


# --- coding_rate ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, d", [(5, 12), (12, 5)])
def test_coding_rate_matches_full_slogdet(n, d):
    z = torch.randn(3, n, d, generator=torch.Generator().manual_seed(0))
    got = srr.coding_rate(z, 0.5)
    want = [full_rate(z[m].double().numpy(), 0.5) for m in range(3)]
    assert got.shape == (3,) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)


def test_coding_rate_single_matrix_is_a_scalar():
    z = torch.randn(7, 4, generator=torch.Generator().manual_seed(1))
    got = srr.coding_rate(z, 0.3)
    assert got.ndim == 0
    assert got.item() == pytest.approx(full_rate(z.double().numpy(), 0.3), rel=1e-10)


def test_coding_rate_of_zero_is_zero():
    assert torch.equal(srr.coding_rate(torch.zeros(2, 6, 4), 0.5), torch.zeros(2, dtype=torch.float64))
    u = torch.randn(2, 4, 2)
    assert torch.equal(srr.coding_rate_subspaces(torch.zeros(2, 6, 4), u, 0.5), torch.zeros(2, dtype=torch.float64))


def test_coding_rate_known_value_orthonormal_columns():
    # N >= d: Z = s * (orthonormal columns), Z^T Z = s^2 I_d, so R = d/2 * log(1 + d s^2 / (N eps^2)).
    n, d, s, eps_sq = 10, 4, 3.0, 0.5
    q = random_orthogonal(n, 2)[:, :d]                      # (N, d), q^T q = I_d
    assert srr.coding_rate(s * q, eps_sq).item() == pytest.approx(0.5 * d * math.log(1 + d * s * s / (n * eps_sq)))
    # N < d: Z = s * (orthonormal rows), Z Z^T = s^2 I_N, so R = N/2 * log(1 + d s^2 / (N eps^2)).
    n, d = 3, 8
    q = random_orthogonal(d, 3)[:n]                         # (N, d), q q^T = I_N
    assert srr.coding_rate(s * q, eps_sq).item() == pytest.approx(0.5 * n * math.log(1 + d * s * s / (n * eps_sq)))


def test_coding_rate_invariant_to_rotating_tokens():
    z = torch.randn(4, 9, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    q = random_orthogonal(6, 5)
    torch.testing.assert_close(srr.coding_rate(z @ q, 0.5), srr.coding_rate(z, 0.5))


# --- coding_rate_subspaces ------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, p", [(9, 3), (2, 5)])   # p < N (p x p Gram) and p > N (N x N Gram)
def test_coding_rate_subspaces_matches_loop_over_heads(n, p):
    g = torch.Generator().manual_seed(6)
    z = torch.randn(3, n, 10, generator=g)
    u = torch.randn(4, 10, p, generator=g)                  # K = 4; not orthonormal, like CRATE's learned qkv
    got = srr.coding_rate_subspaces(z, u, 0.5)
    want = [full_rate_subspaces(z[m].double().numpy(), u.double().numpy(), 0.5) for m in range(3)]
    assert got.shape == (3,)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)


def test_coding_rate_subspaces_uses_p_not_d():
    # One head spanning all of R^d with U = I_d (p = d) gives exactly R; the scale p/(N eps^2) = d/(N eps^2).
    z = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    torch.testing.assert_close(srr.coding_rate_subspaces(z, torch.eye(6, dtype=torch.float64)[None], 0.5),
                               srr.coding_rate(z, 0.5))


def test_coding_rate_subspaces_invariant_to_consistent_rotation():
    g = torch.Generator().manual_seed(8)
    z = torch.randn(3, 7, 6, generator=g, dtype=torch.float64)
    u = torch.randn(3, 6, 2, generator=g, dtype=torch.float64)
    q = random_orthogonal(6, 9)
    torch.testing.assert_close(srr.coding_rate_subspaces(z @ q, q.T @ u, 0.5), srr.coding_rate_subspaces(z, u, 0.5))


def test_bad_shapes_and_eps_are_rejected():
    with pytest.raises(ValueError, match="eps_sq"):
        srr.coding_rate(torch.randn(3, 4), 0.0)
    with pytest.raises(ValueError, match="U must have shape"):
        srr.coding_rate_subspaces(torch.randn(2, 3, 4), torch.randn(2, 5, 2), 0.5)


# --- measures on a tiny CRATE ---------------------------------------------------------------------------------

def tiny_context(**options) -> MeasureContext:
    torch.manual_seed(0)
    m = build_model("crate-c", image_size=8, patch_size=2, channels=1, num_classes=10, dim=16, depth=2, heads=4)
    g = torch.Generator().manual_seed(1)
    return MeasureContext(model=m, init_state={k: v.clone() for k, v in m.state_dict().items()},
                          x=torch.randn(6, 1, 8, 8, generator=g), y=torch.randint(0, 10, (6,), generator=g),
                          n_train=100, options=MeasureOptions(**options))


def loop_per_layer(ctx: MeasureContext, l1: bool = False) -> dict[str, np.ndarray]:
    """Direct recomputation: per layer, per sample, ||Z||_0/(N d) (the default l0="per-entry"; or ||Z||_1), R^c and
    R from the full forms."""
    with torch.no_grad():
        _, feats = ctx.model(ctx.x, return_features=True)
        subspaces = ctx.model.subspaces().double().numpy()
    out = {k: [] for k in ("srr", "sparsity", "rc", "r")}
    for layer, f in enumerate(feats):
        rows = []
        for z in f["Z_out"].double().numpy():
            s = np.abs(z).sum() if l1 else np.count_nonzero(z) / z.size
            rows.append((s, full_rate_subspaces(z, subspaces[layer], ctx.options.eps_sq),
                         full_rate(z, ctx.options.eps_sq)))
        s, rc, r = np.mean(rows, axis=0)
        for k, v in (("srr", s + rc - r), ("sparsity", s), ("rc", rc), ("r", r)):
            out[k].append(v)
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("chunk", [128, 4])   # 4: the 6 samples go through in two uneven chunks
def test_srr_per_layer_matches_direct_loop(chunk, monkeypatch):
    monkeypatch.setattr(srr, "_SAMPLE_CHUNK", chunk)
    ctx = tiny_context()
    got, want = srr.srr_per_layer(ctx), loop_per_layer(ctx)
    for key in want:
        assert got[key].shape == (2,)
        np.testing.assert_allclose(got[key], want[key], rtol=1e-9)
    assert np.all(got["sparsity"] > 0) and np.all(got["sparsity"] <= 1)    # the fraction of non-zero entries
    np.testing.assert_allclose(got["srr"], got["sparsity"] + got["rc"] - got["r"])


def test_srr_per_layer_is_cached_and_shared():
    ctx = tiny_context()
    assert srr.srr_per_layer(ctx) is srr.srr_per_layer(ctx)
    srr.srr(ctx)
    srr.rc(ctx)
    assert sum(key.startswith("srr_per_layer") for key in ctx.cache) == 1


@pytest.mark.parametrize("how, reduce", [("mean", np.mean), ("last", lambda v: v[-1]), ("sum", np.sum)])
def test_aggregate_over_layers(how, reduce):
    ctx = tiny_context(aggregate=how)
    layers = srr.srr_per_layer(ctx)
    for name, key in (("srr", "srr"), ("sparsity", "sparsity"), ("rc", "rc"), ("r", "r")):
        value = get_measure(name)(ctx)
        assert isinstance(value, float)
        assert value == pytest.approx(reduce(layers[key]))
    assert get_measure("rate-reduction")(ctx) == pytest.approx(reduce(layers["r"] - layers["rc"]))
    assert get_measure("srr-last")(ctx) == pytest.approx(layers["srr"][-1])   # whatever the aggregate


def test_l0_options_scale_sparsity_only():
    raw = srr.srr_per_layer(tiny_context(l0="raw"))
    n, d = 17, 16
    per_token = srr.srr_per_layer(tiny_context(l0="per-token"))
    per_entry = srr.srr_per_layer(tiny_context(l0="per-entry"))
    np.testing.assert_allclose(per_token["sparsity"], raw["sparsity"] / n)
    np.testing.assert_allclose(per_entry["sparsity"], raw["sparsity"] / (n * d))
    np.testing.assert_allclose(per_entry["rc"], raw["rc"])
    np.testing.assert_allclose(per_entry["srr"], raw["srr"] - raw["sparsity"] + per_entry["sparsity"])
    ctx = tiny_context(l0="l1")
    np.testing.assert_allclose(srr.srr_per_layer(ctx)["sparsity"], loop_per_layer(ctx, l1=True)["sparsity"])


def test_normalize_tokens_changes_rates_not_sparsity():
    raw, normed = srr.srr_per_layer(tiny_context()), srr.srr_per_layer(tiny_context(normalize_tokens=True))
    np.testing.assert_array_equal(normed["sparsity"], raw["sparsity"])
    ctx = tiny_context()
    _, feats = ctx.features()
    z = torch.nn.functional.normalize(feats[-1]["Z_out"].double(), dim=-1)
    assert normed["r"][-1] == pytest.approx(srr.coding_rate(z, 0.5).mean().item())


def test_default_sparsity_is_the_fraction_of_non_zero_entries():
    # l0 = "per-entry" by default (README: the raw count made ||Z||_0 most of SRR's level)
    assert MeasureOptions().l0 == "per-entry"
    z = torch.tensor([[[0.0, 1.0], [2.0, 0.0], [0.0, 0.0]]])               # N = 3, d = 2, two non-zeros
    got = srr.srr_components(z, torch.eye(2)[None], 0.5)["sparsity"]
    assert got.tolist() == [2 / 6]


def test_registered_directions():
    for name in ("srr", "srr-last", "sparsity", "rc", "r"):
        m = get_measure(name)
        assert m.family == "srr" and m.needs_data and m.higher_is_complex
    assert not get_measure("rate-reduction").higher_is_complex


# --- srr_loss -------------------------------------------------------------------------------------------------

def test_srr_loss_is_differentiable_and_equals_l1_measure():
    ctx = tiny_context(l0="l1", aggregate="mean")
    model = ctx.model
    _, feats = model(ctx.x, return_features=True)
    n, d = feats[0]["Z_out"].shape[1:]
    loss = srr.srr_loss(feats, model.subspaces(), eps_sq=0.5, l1_weight=n * d)
    assert loss.ndim == 0 and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(srr.srr(ctx), rel=1e-5)
    loss.backward()
    for layer in model.layers:
        grad = layer.attn.qkv.weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_srr_loss_layer_selection_and_l1_scaling():
    ctx = tiny_context()
    with torch.no_grad():
        _, feats = ctx.model(ctx.x, return_features=True)
        u = ctx.model.subspaces()
    z = feats[1]["Z_out"].double()
    want = (0.3 * z.abs().mean(dim=(1, 2)) + srr.coding_rate_subspaces(z, u[1], 0.5) - srr.coding_rate(z, 0.5)).mean()
    assert srr.srr_loss(feats, u, 0.5, l1_weight=0.3, layers=1).item() == pytest.approx(want.item(), rel=1e-6)
    both = srr.srr_loss(feats, u, 0.5, layers=[0, 1])
    assert both.item() == pytest.approx(srr.srr_loss(feats, u, 0.5).item())
    with pytest.raises(ValueError, match="layer indices"):
        srr.srr_loss(feats, u, 0.5, layers=[2])
