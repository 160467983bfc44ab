"""measures.compute(model, x, y, ...) on models that are not CRATE: a small MLP and a small CNN built here.

Values are checked against hand computations on an MLP with hand-set weights; every family that does not need
CRATE's internals gives a finite value on a trained MLP and CNN; the CRATE-only measures are left out with their
reason; bad input is a BadValueError naming it.
"""
import doctest
import math

import numpy as np
import pytest
import torch
from torch import nn

import measures
from measures import model_api
from measures.context import MeasureContext, weight_matrices
from measures.spectral import spectral_sq
from zoo.errors import BadValueError

CRATE_ONLY = {"srr", "srr-last", "sparsity", "rc", "r", "rate-reduction", "path-norm", "path-norm-over-margin",
              "path-norm-normalized"}
LOG_ONLY = {"steps-to-ce-0.1", "steps-ce-0.1-to-0.01"}
INIT_ONLY = {"l2-dist-init", "fro-dist", "dist-spec-init", "log-spec-init-main", "pacbayes-init", "pacbayes-mag-init",
             "sharpness-init", "sharpness-mag-init"}
FAST = {"n_samples": 128, "mc_samples": 3, "search_steps": 5, "ascent_steps": 3, "m_sharpness": 32,
        "grad_noise_batch": 16}

# W1 has singular values 3, 2, 1 (‖W1‖²_F = 14); W2 W2ᵀ = diag(2, 4), so ‖W2‖²₂ = 4 and ‖W2‖²_F = 6. Biases 0.
W1 = [[1., 0., 0., 0.], [0., 2., 0., 0.], [0., 0., 0., 3.]]
W2 = [[1., 1., 0.], [0., 0., 2.]]
# f(a, b, 0, c) = (a + 2b, 6c) for a, b, c ≥ 0: logits (1, 0), (2, 0), (0, 6), (0, 3); margins 1, 2, 6, 3
X = torch.tensor([[1., 0., 0., 0.], [0., 1., 0., 0.], [0., 0., 0., 1.], [0., 0., 0., .5]])
Y = torch.tensor([0, 0, 1, 1])


def hand_mlp(scale: float = 1.0) -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor(W1) * scale)
        model[2].weight.copy_(torch.tensor(W2) * scale)
        model[0].bias.zero_()
        model[2].bias.zero_()
    return model


@pytest.fixture(scope="module")
def hand_table():
    return measures.compute(hand_mlp(), X, Y, hand_mlp(0.5).state_dict(), names=["*"], options=FAST)


@pytest.mark.parametrize("name, expected", [
    ("num-params", 12 + 3 + 6 + 2),
    ("l2", math.sqrt(14 + 6)),
    ("param-norm", 14 + 6),
    ("l2-dist-init", math.sqrt(20) / 2),             # w⁰ = w/2
    ("fro-dist", 20 / 4),
    ("dist-spec-init", (9 + 4) / 4),
    ("log-prod-of-spec", math.log(9 * 4)),
    ("log-sum-of-spec", math.log(2 * math.sqrt(36))),  # d (Π ‖W‖²)^{1/d}, d = 2
    ("log-prod-of-fro", math.log(14 * 6)),
    ("fro-over-spec", 14 / 9 + 6 / 4),
    # margins 1, 2, 3, 6 sorted: the 10% quantile at h = 0.3 is 1 + 0.3·(2 − 1)
    ("neg-margin", -1.3),
    ("inverse-margin", 1 / 1.3 ** 2),
    ("log-prod-of-spec-over-margin", math.log(36) - 2 * math.log(1.3)),
    ("log-spec-orig-main", math.log(36) - 2 * math.log(1.3) + math.log(14 / 9 + 6 / 4)),
    # two classes, all right: the confidence of a sample with margin m is sigmoid(m)
    ("mean-confidence", np.mean([1 / (1 + math.exp(-m)) for m in (1, 2, 6, 3)])),
    # one active hidden unit per sample: J = W2[:, j] W1[j, :], ‖J‖_F = ‖W2[:, j]‖·‖W1[j, :]‖ = 1, 2, 6, 6
    ("jacobian-norm", (1 + 2 + 6 + 6) / 4),
])
def test_mlp_values_by_hand(hand_table, name, expected):
    assert hand_table[name].item() == pytest.approx(expected, rel=1e-9)


def test_every_measure_is_a_value_or_left_out_with_its_reason(hand_table):
    skipped, errors = hand_table.attrs["skipped"], hand_table.attrs["errors"]
    assert set(skipped) == CRATE_ONLY | LOG_ONLY
    assert all("CRATE's internals" in skipped[n] and "Sequential" in skipped[n] for n in CRATE_ONLY)
    assert all("training log" in skipped[n] for n in LOG_ONLY)
    assert set(hand_table.columns) | set(skipped) == {m.name for m in measures.available()}
    # a 3×4 matrix has 3 eigenvalues, too few for a power-law fit: NaN, and the reason is given
    assert math.isnan(hand_table["ww-alpha"].item()) and "eigenvalues" in errors["ww-alpha"]


def test_n_train_enters_the_log_m_term(hand_table):
    # the same σ′ search (same sample and seed); only log(m/σ′) moves: m = 4 (len(x)) against 8
    twice = measures.compute(hand_mlp(), X, Y, None, ["pacbayes-orig"], FAST, n_train=8)
    assert twice["pacbayes-orig"].item() - hand_table["pacbayes-orig"].item() == pytest.approx(math.log(2))


def test_without_init_state_the_init_measures_are_left_out_and_named_ones_refused():
    table = measures.compute(hand_mlp(), X, Y, None, ["l2*"], FAST)
    assert table.columns.tolist() == ["l2"] and "initial weights" in table.attrs["skipped"]["l2-dist-init"]
    with pytest.raises(BadValueError, match="'fro-dist' cannot be computed here: it needs the initial weights"):
        measures.compute(hand_mlp(), X, Y, None, ["l2", "fro-dist"])
    with pytest.raises(BadValueError, match="'srr' cannot be computed here: it reads CRATE's internals"):
        measures.compute(hand_mlp(), X, Y, None, ["srr"])
    assert set(measures.compute(hand_mlp(), X, Y, None, ["*-init*", "fro-dist*"], FAST).attrs["skipped"]) == INIT_ONLY


def test_features_are_crate_only_and_logits_any_model():
    ctx = MeasureContext(model=hand_mlp(), init_state=None, x=X, y=Y, n_train=4)
    assert torch.equal(ctx.logits(), torch.tensor([[1., 0.], [2., 0.], [0., 6.], [0., 3.]]))
    with pytest.raises(TypeError, match="Sequential, not a zoo.models.CRATE.*needs_crate=True"):
        ctx.features()


# --- convolutions ---------------------------------------------------------------------------------------------

def test_conv_weights_are_filter_matrices_and_their_spectral_norm_is_the_svd_of_that_matrix():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.ConvTranspose2d(3, 4, 2), nn.Flatten(),
                        nn.Linear(4 * 7 * 7, 5))
    mats = weight_matrices(cnn)
    assert {k: tuple(v.shape) for k, v in mats.items()} == {"0.weight": (3, 18), "2.weight": (4, 12),
                                                            "4.weight": (5, 196)}
    conv, up = cnn[0].weight.detach(), cnn[2].weight.detach()
    assert torch.equal(mats["0.weight"][1], conv[1].flatten())            # row i = filter i
    assert torch.equal(mats["2.weight"][1], up[:, 1].flatten())           # row j = output channel j
    ctx = MeasureContext(model=cnn, init_state=None, x=None, y=None, n_train=None)
    svd = np.linalg.svd(conv.reshape(3, -1).double().numpy(), compute_uv=False)
    assert spectral_sq(ctx)["0.weight"] == pytest.approx(svd[0] ** 2, rel=1e-12)
    init = {k: torch.zeros_like(v) for k, v in cnn.state_dict().items()}
    assert weight_matrices(cnn, init)["0.weight"].shape == (3, 18)


def test_grouped_convs_give_one_row_per_output_channel():
    """Output channel j of a grouped transposed convolution (groups g, weight (in, out/g, k)) reads the in/g input
    channels of its group gi = j // (out/g) through weight[gi*in/g:(gi+1)*in/g, j % (out/g)]: that is its row."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 6, 2, groups=2), nn.ConvTranspose2d(6, 4, 2, groups=2))
    mats = weight_matrices(model)
    conv, up = model[0].weight.detach(), model[1].weight.detach()        # (6, 2, 2, 2) and (6, 2, 2, 2)
    assert {k: tuple(v.shape) for k, v in mats.items()} == {"0.weight": (6, 8), "1.weight": (4, 12)}
    assert torch.equal(mats["0.weight"], conv.reshape(6, 8))
    for j in range(4):
        group, local = divmod(j, 2)
        assert torch.equal(mats["1.weight"][j], up[3 * group:3 * group + 3, local].flatten())


def test_conv_by_hand():
    cnn = nn.Sequential(nn.Conv2d(1, 2, 2, bias=False), nn.Flatten(), nn.Linear(2 * 2 * 2, 2, bias=False))
    with torch.no_grad():
        cnn[0].weight.copy_(torch.tensor([[[[1., 0.], [0., 0.]]], [[[0., 0.], [0., 2.]]]]))  # rows e1, 2·e4
        cnn[2].weight.zero_()
        cnn[2].weight[0, 0] = 1.0
    table = measures.compute(cnn, torch.zeros(3, 1, 3, 3), torch.tensor([0, 1, 0]), None,
                             ["log-prod-of-spec", "log-prod-of-fro", "num-params"])
    assert table["log-prod-of-spec"].item() == pytest.approx(math.log(4 * 1))    # ‖[e1; 2e4]‖²₂ = 4, head 1
    assert table["log-prod-of-fro"].item() == pytest.approx(math.log(5 * 1))
    assert table["num-params"].item() == 8 + 16


# --- every non-CRATE family on trained models -----------------------------------------------------------------

def trained(model: nn.Module, x: torch.Tensor, classes: int, steps: int = 300):
    torch.manual_seed(1)
    y = (x.reshape(len(x), -1) @ torch.randn(x[0].numel(), classes)).argmax(1)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, y, init


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_every_family_but_crate_gives_finite_values(kind):
    torch.manual_seed(0)
    if kind == "mlp":
        x = torch.randn(128, 8)
        model = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 6))
        classes = 6
    else:
        x = torch.randn(128, 1, 6, 6)
        model = nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 5))
        classes = 5
    model, y, init = trained(model, x, classes)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    table = measures.compute(model, x, y, init, options=FAST)
    assert table.attrs["errors"] == {}
    assert set(table.attrs["skipped"]) == CRATE_ONLY | LOG_ONLY
    assert np.isfinite(table.to_numpy()).all()
    families = {measures.get_measure(n).family for n in table.columns}
    assert families >= {"norm", "spectral", "margin", "pac-bayes", "sharpness", "calibration", "heavy-tail",
                        "input-sensitivity", "optimization"}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "a measure changed the model"


# --- bad input ------------------------------------------------------------------------------------------------

class Regressor(nn.Module):
    def forward(self, x):
        return x.sum(1)                                             # (N,), not (N, classes)


@pytest.mark.parametrize("model, x, y, words", [
    (hand_mlp(), X, Y[:3], ["y must be labels of shape (4,)", "(3,)"]),
    (hand_mlp(), X, Y.float(), ["non-negative integer class labels", "float32"]),
    (hand_mlp(), X, -Y, ["non-negative integer", "-1"]),
    (hand_mlp(), X, None, ["give both x and y"]),
    (Regressor(), X, Y, ["Regressor) is not a classifier", "returns (2,)"]),
    (hand_mlp(), X, torch.tensor([0, 1, 2, 1]), ["gives 2 logit(s)", "labels go up to 2", "at least 3"]),
    (hand_mlp(), torch.zeros(4, 5), Y, ["rejects inputs of shape (5,) per sample", "RuntimeError"]),
])
def test_bad_input_is_named(model, x, y, words):
    with pytest.raises(BadValueError) as err:
        measures.compute(model, x, y, None, ["l2"])
    for word in words:
        assert word in str(err.value)


def test_init_state_of_another_model_is_named():
    init = hand_mlp().state_dict()
    init.pop("2.bias")
    init["extra"] = torch.zeros(1)
    init["0.weight"] = torch.zeros(2, 2)
    with pytest.raises(BadValueError, match=r"init_state does not fit the model \(Sequential\): missing keys "
                                            r"2.bias; unexpected keys extra; misshaped 0.weight \(2, 2\) != \(3, 4\)"):
        measures.compute(hand_mlp(), X, Y, init, ["l2"])


def test_a_run_directory_points_to_compute_run(tmp_path):
    with pytest.raises(BadValueError, match="takes a torch.nn.Module, got PosixPath.*compute_run"):
        measures.compute(tmp_path, X, Y)


def test_a_bad_n_train_is_named_and_one_name_may_be_a_string():
    with pytest.raises(BadValueError, match="n_train must be a positive int.*0"):
        measures.compute(hand_mlp(), X, Y, None, ["l2"], n_train=0)
    assert measures.compute(hand_mlp(), X, Y, None, "l2").columns.tolist() == ["l2"]


def test_docstring_example():
    failures, tried = doctest.testmod(model_api)
    assert tried > 0 and failures == 0
