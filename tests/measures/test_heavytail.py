"""Power-law fits on samples of known power laws, the MLE by hand, and the matrices the α measures cover."""
import math

import numpy as np
import pytest
import torch

from measures.context import MeasureContext, MeasureUndefined
from measures.heavytail import fit_power_law, matrix_power_laws, power_law_mle, ww_alpha, ww_alpha_weighted
from zoo.models import build_model


def pareto(alpha, x_min, n, seed):
    u = np.random.default_rng(seed).random(n)
    return x_min * (1.0 - u) ** (-1.0 / (alpha - 1.0))           # inverse CDF of p(x) ∝ x^{-alpha}, x >= x_min


def test_mle_by_hand():
    assert power_law_mle(np.array([1.0, math.e]), 1.0) == 3.0               # 1 + 2 / (ln 1 + ln e)
    assert power_law_mle(np.array([0.5, 2.0, 2.0 * math.e ** 2]), 2.0) == 2.0   # 0.5 is below x_min: 1 + 2/2


@pytest.mark.parametrize("alpha", [2.0, 2.5, 4.0])
def test_fit_recovers_the_exponent_of_a_pure_power_law(alpha):
    fits = [fit_power_law(pareto(alpha, 1.0, 2000, seed)) for seed in range(3)]
    assert all(abs(f.alpha - alpha) < 0.2 for f in fits), [f.alpha for f in fits]


def test_ks_finds_where_the_tail_starts_above_a_uniform_bulk():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(0.0, 1.0, 1000), pareto(3.0, 1.0, 1000, seed=1)])
    fit = fit_power_law(x)
    assert 0.9 <= fit.x_min <= 1.3 and abs(fit.alpha - 3.0) < 0.25, fit


def test_fit_refuses_too_few_points():
    with pytest.raises(ValueError, match="at least 5"):
        fit_power_law(np.array([1.0, 2.0, 3.0]))


def test_every_weight_matrix_is_fitted_including_the_ista_dictionary():
    torch.manual_seed(0)
    m = build_model("crate-c", image_size=8, patch_size=4, channels=1, num_classes=10, dim=16, depth=2, heads=2)
    ctx = MeasureContext(model=m, init_state={}, x=None, y=None, n_train=None)
    fits = matrix_power_laws(ctx)
    assert set(fits) == {n for n, p in m.named_parameters() if p.ndim == 2}
    assert {"layers.0.ista.weight", "layers.1.ista.weight"} <= set(fits)   # bare nn.Parameter, not nn.Linear
    name = "layers.1.ista.weight"
    eig = np.linalg.svd(m.layers[1].ista.weight.detach().double().numpy(), compute_uv=False) ** 2
    expected = fit_power_law(eig)
    assert (fits[name][0].alpha, fits[name][0].x_min) == pytest.approx((expected.alpha, expected.x_min), rel=1e-9)
    assert fits[name][1] == pytest.approx(eig.max(), rel=1e-12)
    assert ww_alpha(ctx) == pytest.approx(np.mean([f.alpha for f, _ in fits.values()]))
    assert ww_alpha_weighted(ctx) == pytest.approx(np.mean([f.alpha * math.log10(l) for f, l in fits.values()]))


def test_a_matrix_with_too_few_eigenvalues_is_named():
    m = build_model("crate", image_size=8, patch_size=4, channels=1, num_classes=3, dim=8, depth=1, heads=2)
    with pytest.raises(MeasureUndefined, match="head.weight has 3 non-zero eigenvalues"):
        ww_alpha(MeasureContext(model=m, init_state={}, x=None, y=None, n_train=None))
