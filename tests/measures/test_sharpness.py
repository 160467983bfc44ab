"""PAC-Bayes σ′ and sharpness α′ searches, their bounds, and the adaptive sharpness measures."""
import math
from statistics import NormalDist

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.reference import alpha_search_sequential, sigma_search_sequential
from measures import pacbayes, sharpness
from measures.context import MeasureContext, MeasureOptions
from measures.registry import available
from zoo.models import build_model

TARGET = 0.1
Z = NormalDist().inv_cdf(1 - TARGET)   # drop(σ) = Φ(−a/std) = 0.1  ⇔  std = a / Z
FAST = dict(search_steps=10, mc_samples=4, ascent_steps=3, m_sharpness=32)


class MarginStub(nn.Module):
    """Two-class "model" where sample i is decided by its own parameter b_i = ±a alone: z_i = x_i · b.

    x is one-hot, so noise u on b flips sample i exactly when u_i crosses −b_i: P(flip) = Φ(−a/std_i).
    """

    def __init__(self, n: int, a: float):
        super().__init__()
        signs = torch.tensor([1.0, -1.0]).repeat(n // 2)
        self.b = nn.Parameter(a * signs)

    def forward(self, x):
        z = x @ self.b                                                   # (B,)
        return torch.stack([torch.zeros_like(z), z], dim=-1)             # (B, 2): class 1 iff z > 0


def stub_data(n):
    x = torch.eye(n)
    y = torch.tensor([1, 0]).repeat(n // 2)
    return x, y


def tiny_crate(variant="crate", seed=0, steps=40):
    """A dim-16 CRATE trained for a few full-batch steps on 128 separable 8x8 images (4 classes)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(4, 1, 8, 8, generator=g)
    y = torch.arange(128) % 4
    x = protos[y] + 0.3 * torch.randn(128, 1, 8, 8, generator=g)
    torch.manual_seed(seed)
    model = build_model(variant, image_size=8, patch_size=2, channels=1, num_classes=4, dim=16, depth=2, heads=2)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), init, x, y


@pytest.fixture(scope="module")
def trained():
    return tiny_crate()


def make_ctx(model, init, x, y, **options):
    return MeasureContext(model=model, init_state=init, x=x, y=y, n_train=100,
                          options=MeasureOptions(**{**FAST, **options}))


# ---------------------------------------------------------------------------------------------------------
# σ′ search

def test_sigma_search_finds_the_analytic_std():
    a, n = 0.5, 1000
    x, y = stub_data(n)
    sigma = pacbayes.sigma_search(MarginStub(n, a), x, y, seed=0, target_drop=TARGET, search_steps=20,
                                  search_tolerance=0.003, mc_samples=20)
    expected = a / Z                                   # 0.390; using σ as the variance would give 0.152
    assert sigma == pytest.approx(expected, rel=0.05)


def test_magnitude_sigma_search_uses_std_sqrt_sigma2_w2_plus_eps2():
    a, n, eps = 0.5, 1000, 0.1
    x, y = stub_data(n)
    sigma = pacbayes.sigma_search(MarginStub(n, a), x, y, seed=0, target_drop=TARGET, search_steps=20,
                                  search_tolerance=0.003, mc_samples=20, magnitude_eps=eps)
    expected = math.sqrt((a / Z) ** 2 - eps ** 2) / a  # 0.754; std = σ|w| + ε would give 0.58, the variance 1.23
    assert sigma == pytest.approx(expected, rel=0.05)


def test_magnitude_noise_std_per_coordinate_class():
    params = {"zero": torch.zeros(50), "small": torch.full((50,), 0.2), "large": torch.full((50,), -3.0)}
    xi = pacbayes.standard_noise(params, pacbayes.draw_seeds(1, 4000))
    sigma, eps = 0.3, 0.05
    noisy = pacbayes.perturb(params, xi, sigma, eps)
    for name, w in params.items():
        empirical = (noisy[name] - w).std().item()
        assert empirical == pytest.approx(math.sqrt(sigma ** 2 * w[0].item() ** 2 + eps ** 2), rel=0.02), name
        assert (noisy[name] - w).mean().item() == pytest.approx(0.0, abs=0.01)


def test_early_decision_never_changes_sigma(trained):
    model, _, x, y = trained
    whole = pacbayes.sigma_search(model, x, y, seed=3, search_steps=10, mc_samples=6, chunk_size=len(x))
    chunked = pacbayes.sigma_search(model, x, y, seed=3, search_steps=10, mc_samples=6, chunk_size=16)
    looped = pacbayes.sigma_search(model, x, y, seed=3, search_steps=10, mc_samples=6, vectorize=False)
    assert chunked == whole == looped


@pytest.mark.parametrize("magnitude_eps", [None, 1e-3])
def test_batched_search_matches_the_sequential_reference(trained, magnitude_eps):
    model, _, x, y = trained
    kwargs = dict(seed=11, search_steps=10, mc_samples=5, magnitude_eps=magnitude_eps)
    assert pacbayes.sigma_search(model, x, y, **kwargs) == sigma_search_sequential(model, x, y, **kwargs)


@pytest.mark.parametrize("variant", ["crate-c", "crate-t", "crate-fix", "crate-identity"])
def test_sigma_search_runs_batched_on_every_output_map(variant):
    model, _, x, y = tiny_crate(variant, steps=5)
    sigma = pacbayes.sigma_search(model, x[:32], y[:32], seed=0, search_steps=4, mc_samples=3)
    assert 0 < sigma <= 2


def test_frozen_parameters_are_perturbed():
    model = build_model("crate-fix", image_size=8, patch_size=2, channels=1, num_classes=4, dim=16, depth=1,
                        heads=2)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and frozen <= set(pacbayes.perturbable_parameters(model))


def test_a_search_that_never_succeeds_warns_and_returns_the_floor():
    n = 200
    x, y = stub_data(n)
    ctx = MeasureContext(model=MarginStub(n, 1e-9), init_state={}, x=x, y=y, n_train=100,
                         options=MeasureOptions(search_steps=6, mc_samples=2))
    with pytest.warns(RuntimeWarning, match="bisection floor"):
        assert pacbayes.sigma_prime(ctx) == 2 / 2 ** 7


# ---------------------------------------------------------------------------------------------------------
# Bounds given σ′ and α′

def _vectors(model, init):
    names = [n for n, p in model.named_parameters() if p.ndim == 2]
    w = np.concatenate([model.state_dict()[n].numpy().ravel() for n in names]).astype(np.float64)
    w0 = np.concatenate([init[n].numpy().ravel() for n in names]).astype(np.float64)
    return w, w0


def test_bounds_equal_their_formulas(trained):
    model, init, x, y = trained
    ctx = make_ctx(model, init, x, y, magnitude_eps=1e-3, sharpness_mag_eps=1e-3)
    s, sm, a, am, m, eps = 0.05, 0.2, 0.004, 0.03, 100, 1e-3
    ctx.cache.update({pacbayes.SIGMA_KEY: s, pacbayes.MAG_SIGMA_KEY: sm,
                      sharpness.ALPHA_KEY: a, sharpness.MAG_ALPHA_KEY: am})
    w, w0 = _vectors(model, init)
    d, omega = w - w0, w.size

    def mag(norm_sq, v, scale, extra):
        prior = eps ** 2 + (scale ** 2 + extra) * norm_sq / omega
        return 0.25 * np.log(prior / (eps ** 2 + scale ** 2 * v ** 2)).sum()

    expected = {
        "pacbayes-init": (d @ d) / (4 * s ** 2) + math.log(m / s) + 10,
        "pacbayes-orig": (w @ w) / (4 * s ** 2) + math.log(m / s) + 10,
        "pacbayes-flatness": 1 / s ** 2,
        "pacbayes-mag-init": mag(d @ d, w, sm, 1) + math.log(m / sm) + 10,
        "pacbayes-mag-orig": mag(w @ w, w, sm, 1) + math.log(m / sm) + 10,
        "pacbayes-mag-flatness": 1 / sm ** 2,
        "sharpness-init": (d @ d) * math.log(2 * omega) / (4 * a ** 2) + math.log(m / a) + 10,
        "sharpness-orig": (w @ w) * math.log(2 * omega) / (4 * a ** 2) + math.log(m / a) + 10,
        "sharpness-flatness": 1 / a ** 2,
        "sharpness-mag-init": mag(d @ d, w, am, 4 * math.log(2 * omega)) + math.log(m / am) + 10,
        "sharpness-mag-orig": mag(w @ w, w, am, 4 * math.log(2 * omega)) + math.log(m / am) + 10,
        "sharpness-mag-flatness": 1 / am ** 2,
    }
    for measure in available("pacbayes-*") + available("sharpness-*"):
        assert measure(ctx) == pytest.approx(expected[measure.name], rel=1e-9), measure.name


def test_magnitude_bound_denominators_are_the_noise_variance_also_where_w_equals_w0():
    # w = (1, 2), w⁰ = (1, 0): the first weight never moved (a frozen crate-fix map). σ = 0.5, ε = 0.1, m = 100.
    # The noise of coordinate i has variance σ²w_i² + ε² = (0.26, 1.01), so the denominators are those, whatever w⁰:
    # pacbayes-mag-init = ¼[log((0.01 + 1.25·4/2)/0.26) + log(2.51/1.01)] + log(200) + 10.
    w, d = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 2.0])
    by_hand = 0.25 * (math.log(2.51 / 0.26) + math.log(2.51 / 1.01)) + math.log(100 / 0.5) + 10
    assert pacbayes.pacbayes_mag_bound(float(d @ d), w, 0.5, 0.1, 100) == pytest.approx(by_hand, rel=1e-12)
    # the sharpness twin: prior variance ε² + (α² + 4 log 2ω)‖w − w⁰‖²/ω with ω = 2, α = 0.5
    prior = 0.01 + (0.25 + 4 * math.log(4)) * 4 / 2
    by_hand = 0.25 * (math.log(prior / 0.26) + math.log(prior / 1.01)) + math.log(100 / 0.5) + 10
    assert sharpness.sharpness_mag_bound(float(d @ d), w, 0.5, 0.1, 100) == pytest.approx(by_hand, rel=1e-12)


def test_frozen_output_maps_no_longer_inflate_the_magnitude_bound():
    # crate-fix's output maps keep their initial values: the old (w − w⁰) denominator counted each of their
    # coordinates as log(σ′²w_i²/ε²)/4 too large; the bound must now equal the formula with w in the denominator.
    model, init, x, y = tiny_crate("crate-fix", steps=5)
    ctx = make_ctx(model, init, x, y, magnitude_eps=1e-3)
    ctx.cache[pacbayes.MAG_SIGMA_KEY] = 0.2
    w, w0 = _vectors(model, init)
    frozen = w == w0
    assert frozen.sum() > 100                      # the output maps
    d = w - w0
    prior = 1e-6 + (0.04 + 1) * (d @ d) / w.size
    expected = 0.25 * np.log(prior / (1e-6 + 0.04 * w ** 2)).sum() + math.log(100 / 0.2) + 10
    old = 0.25 * np.log(prior / (1e-6 + 0.04 * d ** 2)).sum() + math.log(100 / 0.2) + 10
    value = available("pacbayes-mag-init")[0](ctx)
    assert value == pytest.approx(expected, rel=1e-9)
    assert old - value > 1000                      # what the frozen coordinates added before


# ---------------------------------------------------------------------------------------------------------
# α′ search

def test_worst_case_ascent_beats_random_points_of_the_same_box(trained):
    model, _, x, y = trained
    params = pacbayes.perturbable_parameters(model)
    clean = pacbayes.correct_count(model, params, x, y)
    sigma = pacbayes.sigma_search(model, x, y, seed=0, search_steps=10, mc_samples=4)
    radius = sharpness.box_radius(params, sigma / 4, None)
    g = torch.Generator().manual_seed(0)
    random_drops = []
    for _ in range(10):
        start = {k: 2 * torch.rand(w.shape, generator=g) - 1 for k, w in params.items()}
        random_drops.append(sharpness.worst_case_drop(model, params, radius, start, x, y, clean, steps=0))
    worst = sharpness.worst_case_drop(model, params, radius, start, x, y, clean, steps=5)
    assert worst >= max(random_drops)
    assert worst > 0.2


def test_alpha_prime_is_below_the_random_noise_scale(trained):
    model, init, x, y = trained
    ctx = make_ctx(model, init, x, y, search_steps=10)
    alpha, sigma = sharpness.alpha_prime(ctx), pacbayes.sigma_prime(ctx)
    assert 0 < alpha <= sigma        # a worst-case box needs a smaller scale than random noise for the same drop


def test_alpha_search_stops_early_only_on_a_certain_decision(trained):
    model, _, x, y = trained
    params = pacbayes.perturbable_parameters(model)
    clean = pacbayes.correct_count(model, params, x, y)
    start = {k: torch.zeros_like(w) for k, w in params.items()}
    radius = sharpness.box_radius(params, 0.05, None)
    full = sharpness.worst_case_drop(model, params, radius, start, x, y, clean, steps=4)
    stopped = sharpness.worst_case_drop(model, params, radius, start, x, y, clean, steps=4, stop_above=0.11)
    assert full > 0.11 and stopped > 0.11 and stopped <= full


# ---------------------------------------------------------------------------------------------------------
# Adaptive sharpness

@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_adaptive_sharpness_is_zero_at_zero_radius_positive_beyond_and_linf_worst_exceeds_average(trained, norm):
    model, _, x, y = trained
    kw = dict(batch_size=32, norm=norm)
    assert sharpness.adaptive_sharpness_avg(model, x, y, rho=0.0, draws=3, seed=0, **kw) == pytest.approx(0, abs=1e-7)
    assert sharpness.adaptive_sharpness_worst(model, x, y, rho=0.0, steps=3, **kw) == pytest.approx(0, abs=1e-7)
    avg = sharpness.adaptive_sharpness_avg(model, x, y, rho=0.5, draws=3, seed=0, **kw)
    worst = sharpness.adaptive_sharpness_worst(model, x, y, rho=0.5, steps=5, **kw)
    assert worst > 0 and avg > 0
    if norm == "linf":   # every ℓ∞ draw lies inside the box; an ℓ2 draw (‖ξ‖₂ ≈ √ω) lies far outside the ℓ2 ball
        assert worst > avg


class LossStub(nn.Module):
    """A "model" whose cross-entropy on label 0 is exactly q(w): logits (0, log(e^q − 1)) give CE = log(1 + e^q − 1)."""

    def __init__(self, w: torch.Tensor, q):
        super().__init__()
        self.w, self.q = nn.Parameter(w), q

    def forward(self, x):
        z = torch.log(torch.expm1(self.q(self.w))).expand(len(x))
        return torch.stack([torch.zeros_like(z), z], dim=-1)


def _stub_data(n=8):
    return torch.zeros(n, 1, dtype=torch.float64), torch.zeros(n, dtype=torch.long)


@pytest.mark.parametrize("norm, second_moment", [("l2", 1.0), ("linf", 1 / 3)])
def test_adaptive_average_sharpness_of_a_quadratic_is_half_rho2_w2_h(norm, second_moment):
    # L(w) = 3 + ½ Σ h_i w_i²: E[L(w + ρ|w|⊙ξ)] − L(w) = ½ Σ_i ρ² w_i² h_i E[ξ_i²] (the linear term averages out).
    g = torch.Generator().manual_seed(0)
    w = torch.randn(400, generator=g, dtype=torch.float64)
    h = torch.rand(400, generator=g, dtype=torch.float64) + 0.5
    model = LossStub(w.clone(), lambda v: 3 + 0.5 * (h * v ** 2).sum())
    rho = 0.1
    expected = 0.5 * rho ** 2 * float((w ** 2 * h).sum()) * second_moment     # ≈ 1.0 (ℓ2); per-coordinate noise
    x, y = _stub_data()
    value = sharpness.adaptive_sharpness_avg(model, x, y, rho=rho, batch_size=8, draws=4000, seed=1, norm=norm)
    assert value == pytest.approx(expected, rel=0.05)    # Monte-Carlo std of the linear term: ~2%
    # normalising ξ over the whole vector (version 1) would give expected/ω, 400 times smaller
    assert value > 10 * expected / w.numel()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_adaptive_worst_sharpness_of_a_linear_loss_is_the_dual_norm(norm):
    # L(w) = 50 + g·w: max over ‖δ⊘|w|‖ ≤ ρ of g·δ is ρ‖w⊙g‖₂ (ℓ2 ball) or ρ‖w⊙g‖₁ (ℓ∞ box).
    gen = torch.Generator().manual_seed(0)
    w, grad = torch.randn(50, generator=gen, dtype=torch.float64), torch.randn(50, generator=gen, dtype=torch.float64)
    model = LossStub(w.clone(), lambda v: 50 + (grad * v).sum())
    rho = 0.05
    dual = (w * grad).norm(2 if norm == "l2" else 1)
    x, y = _stub_data()
    value = sharpness.adaptive_sharpness_worst(model, x, y, rho=rho, batch_size=8, steps=5, norm=norm)
    assert value == pytest.approx(rho * float(dual), rel=1e-9)


def test_adaptive_average_sharpness_is_positive_and_seed_stable_on_a_trained_model(trained):
    model, _, x, y = trained
    values = [sharpness.adaptive_sharpness_avg(model, x, y, rho=0.05, batch_size=32, draws=10, seed=s)
              for s in range(3)]
    assert min(values) > 0
    assert max(values) < 1.5 * min(values)      # the seed moves it by Monte-Carlo noise only, not its sign


def test_sharpness_options_are_validated_and_read_from_measure_options():
    opts = MeasureOptions(sharpness_mag_eps=1e-4, adaptive_norm="linf")
    from types import SimpleNamespace
    ctx = SimpleNamespace(options=opts)
    assert sharpness.box_eps(ctx) == 1e-4 and sharpness.adaptive_norm(ctx) == "linf"
    with pytest.raises(ValueError, match="adaptive_norm"):
        MeasureOptions(adaptive_norm="l1")


def test_adaptive_sharpness_uses_batches_of_m():
    x, y = torch.zeros(100, 3), torch.zeros(100, dtype=torch.long)
    assert [len(b) for b, _ in sharpness.sample_batches(x, y, 32)] == [32, 32, 32]
    assert [len(b) for b, _ in sharpness.sample_batches(x, y, 128)] == [100]


# ---------------------------------------------------------------------------------------------------------
# Contract: deterministic, order-independent, model untouched

def test_measures_are_deterministic_order_independent_and_leave_the_model_unchanged(trained):
    model, init, x, y = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = [m.name for m in available("pacbayes-*") + available("*sharpness*")]
    assert len(names) == 14
    first_ctx, second_ctx = make_ctx(model, init, x, y), make_ctx(model, init, x, y)
    first = {}
    for name in names:
        first[name] = available(name)[0](first_ctx)
        for key, value in model.state_dict().items():
            assert torch.equal(value, before[key]), f"{name} changed {key}"
    second = {name: available(name)[0](second_ctx) for name in reversed(names)}
    assert first == second
    assert all(math.isfinite(v) for v in first.values())
    assert not model.training


@pytest.mark.parametrize("magnitude_eps", [None, 1e-5])
def test_alpha_search_matches_the_sequential_reference(trained, magnitude_eps):
    # the fast search abandons an ascent once its drop exceeds target + tolerance; the reference never does
    model, _, x, y = trained
    kwargs = dict(seed=5, search_steps=8, ascent_steps=3, magnitude_eps=magnitude_eps)
    assert sharpness.alpha_search(model, x, y, **kwargs) == alpha_search_sequential(model, x, y, **kwargs)
