"""Margin γ: signed, linear-interpolation quantile; 1/γ² undefined for γ ≤ 0; −γ defined for any sign."""
import math

import numpy as np
import pytest
import torch

from measures.context import MeasureContext, MeasureOptions
from measures.margin import MeasureUndefined, inverse_margin, margin, neg_margin, sample_margins
from zoo.models import build_model


def logits_with_margins(margins, labels, classes=3):
    """Logits whose sample i has label labels[i] and margin exactly margins[i] (runner-up logit 0, the rest −5)."""
    logits = torch.full((len(margins), classes), -5.0)
    for i, (m, y) in enumerate(zip(margins, labels)):
        logits[i, y] = m
        logits[i, (y + 1) % classes] = 0.0
    return logits


def context(margins, **options):
    m = build_model("crate", image_size=4, patch_size=2, channels=1, num_classes=3, dim=4, depth=1, heads=2)
    labels = [i % 3 for i in range(len(margins))]
    ctx = MeasureContext(model=m, init_state={k: v.clone() for k, v in m.state_dict().items()},
                         x=torch.zeros(len(margins), 1, 4, 4), y=torch.tensor(labels), n_train=100,
                         options=MeasureOptions(**options))
    ctx.cache["features"] = (logits_with_margins(margins, labels), [])
    return ctx


def test_sample_margins_are_signed():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 1.0, -1.0]])
    assert sample_margins(logits, torch.tensor([0, 0, 1])).tolist() == [2.0, -2.0, 0.0]


def test_tenth_percentile_uses_linear_interpolation_and_keeps_the_sign():
    margins = [5.0, -3.0, 2.0, -1.0, 4.0, 0.5, 1.0, 6.0, 3.0, 2.0]
    ctx = context(margins)
    # sorted: -3, -1, 0.5, ...; position h = 0.1 * (10 - 1) = 0.9 -> -3 + 0.9 * (-1 - -3) = -1.2
    assert margin(ctx) == pytest.approx(-1.2)
    assert margin(ctx) == pytest.approx(np.quantile(margins, 0.1))
    assert neg_margin(ctx) == pytest.approx(1.2)
    with pytest.raises(MeasureUndefined, match=r"margin γ = -1\.2 ≤ 0"):
        inverse_margin(ctx)


def test_inverse_margin_on_positive_margins():
    margins = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5]
    ctx = context(margins)
    assert margin(ctx) == pytest.approx(1.0)            # h = 0.1 * 10 = 1 -> the second smallest
    assert inverse_margin(ctx) == pytest.approx(1.0)
    assert neg_margin(ctx) == pytest.approx(-1.0)
    assert margin(context(margins, margin_quantile=0.5)) == pytest.approx(3.0)   # the median
    assert inverse_margin(context([2.0] * 10)) == pytest.approx(0.25)


def test_zero_margin_is_undefined_too():
    with pytest.raises(MeasureUndefined, match="misclassifies more than 10%"):
        inverse_margin(context([0.0] * 10))


def test_margin_is_cached_and_computed_from_the_models_logits():
    m = build_model("crate", image_size=4, patch_size=2, channels=1, num_classes=3, dim=4, depth=1, heads=2)
    x, y = torch.randn(20, 1, 4, 4), torch.randint(0, 3, (20,))
    ctx = MeasureContext(model=m, init_state=m.state_dict(), x=x, y=y, n_train=100)
    with torch.no_grad():
        logits = m(x).double()
    true = logits[torch.arange(20), y]
    runner_up = logits.scatter(1, y[:, None], -math.inf).max(1).values
    assert margin(ctx) == pytest.approx(float(torch.quantile(true - runner_up, 0.1)), rel=1e-6)
    assert ctx.cache["margin.gamma"] == margin(ctx)
