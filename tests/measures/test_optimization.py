"""Optimisation-based measures: step counts read from a hand-written training log, and the minibatch gradient
variance against the closed-form gradient of a linear softmax classifier."""
import math

import numpy as np
import pytest
import torch

from measures.context import MeasureContext, MeasureOptions, MeasureUndefined
from measures.optimization import grad_noise, minibatch_gradient_variance, steps_ce_01_to_001, steps_to_ce_01

LOG = [{"epoch": 1, "step": 19, "train_loss": 1.2}, {"epoch": 2, "step": 38, "train_loss": 0.1},
       {"epoch": 3, "step": 57, "train_loss": 0.03}, {"epoch": 4, "step": 76, "train_loss": 0.009}]


def log_context(log):
    return MeasureContext(model=torch.nn.Linear(1, 2), init_state={}, x=None, y=None, n_train=None,
                          training_log=log)


def test_steps_are_read_at_the_first_epoch_at_or_below_each_threshold():
    ctx = log_context(LOG)
    assert steps_to_ce_01(ctx) == 38.0                  # CE 0.1 <= 0.1 at epoch 2
    assert steps_ce_01_to_001(ctx) == 76.0 - 38.0        # CE 0.009 <= 0.01 at epoch 4


@pytest.mark.parametrize("log, reason", [(None, "no training log"), ([], "no training log"),
                                         (LOG[:3], "never reached 0.01")])
def test_missing_log_or_threshold_is_undefined_with_the_reason(log, reason):
    with pytest.raises(MeasureUndefined, match=reason):
        steps_ce_01_to_001(log_context(log))


def test_gradient_variance_matches_the_closed_form_of_a_linear_softmax_classifier():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 4, bias=False).double()
    x, y = torch.randn(10, 3, dtype=torch.float64), torch.randint(0, 4, (10,))
    # d mean CE / d W = (1/B) Σ_i (softmax(W x_i) - e_{y_i}) x_i^T; the 10th sample is left out (batches of 3)
    w = model.weight.detach().numpy()
    grads = []
    for b in range(3):
        xb, yb = x[3 * b:3 * b + 3].numpy(), y[3 * b:3 * b + 3].numpy()
        logits = xb @ w.T
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(3), yb] -= 1.0
        grads.append((p.T @ xb / 3).ravel())
    g = np.array(grads)
    expected = ((g - g.mean(0)) ** 2).sum(1).mean()
    assert minibatch_gradient_variance(model, x, y, batch_size=3) == pytest.approx(expected, rel=1e-10)
    assert model.weight.grad is None                      # read only


def test_grad_noise_uses_the_option_batch_and_needs_two_batches():
    torch.manual_seed(1)
    model = torch.nn.Linear(3, 2).double()
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    ctx = MeasureContext(model=model, init_state={}, x=x, y=y, n_train=8, options=MeasureOptions(grad_noise_batch=4))
    assert grad_noise(ctx) == pytest.approx(minibatch_gradient_variance(model, x, y, 4))
    with pytest.raises(MeasureUndefined, match="at least 2 minibatches"):
        minibatch_gradient_variance(model, x, y, 5)
    identical = torch.cat([x[:4], x[:4]]), torch.cat([y[:4], y[:4]])
    assert minibatch_gradient_variance(model, *identical, 4) == pytest.approx(0.0, abs=1e-24)
    assert math.isfinite(grad_noise(ctx))


def test_a_parameter_the_loss_does_not_reach_counts_as_zero_gradient():
    torch.manual_seed(2)
    model = torch.nn.Linear(3, 2).double()
    model.unused = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    plain = torch.nn.Linear(3, 2).double()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k != "unused"})
    assert minibatch_gradient_variance(model, x, y, 4) == pytest.approx(minibatch_gradient_variance(plain, x, y, 4))
