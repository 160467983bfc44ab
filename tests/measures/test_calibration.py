"""Calibration measures on logits whose softmax is known by hand."""
import math

import pytest
import torch

from measures.calibration import ece, expected_calibration_error, mean_confidence, output_entropy
from measures.context import MeasureContext, MeasureOptions


def logits_context(probs, y, bins=15):
    probs = torch.tensor(probs, dtype=torch.float64)
    # the identity model's logits are its inputs log p, and softmax(log p) = p
    return MeasureContext(model=torch.nn.Identity(), init_state={}, x=probs.log(), y=torch.tensor(y),
                          n_train=len(probs), options=MeasureOptions(ece_bins=bins))


def test_ece_by_hand():
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.5 (right); 10 bins: (0.8, 0.9] holds both 0.9s with
    # accuracy 1/2, (0.5, 0.6] holds 0.6 with accuracy 1, (0.4, 0.5] holds 0.5 with accuracy 1
    probs = [[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.5, 0.5]]
    ctx = logits_context(probs, [0, 1, 1, 0], bins=10)
    expected = (2 * abs(0.5 - 0.9) + abs(1 - 0.6) + abs(1 - 0.5)) / 4       # 0.425
    assert ece(ctx) == pytest.approx(expected)
    assert mean_confidence(ctx) == pytest.approx((0.9 + 0.9 + 0.6 + 0.5) / 4)
    h = lambda p: -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert output_entropy(ctx) == pytest.approx((2 * h(0.9) + h(0.4) + h(0.5)) / 4)


def test_ece_uses_fifteen_equal_width_bins_by_default():
    # 0.66 and 0.6 share the bin (0.6, 0.667] of 15 bins only if 0.6 were inside; it is the bin edge 9/15 = 0.6,
    # which belongs to the lower bin (0.533, 0.6]: separate bins, so the errors do not cancel
    probs = [[0.66, 0.34], [0.6, 0.4]]
    ctx = logits_context(probs, [1, 0])
    assert ece(ctx) == pytest.approx((abs(0 - 0.66) + abs(1 - 0.6)) / 2)
    assert expected_calibration_error(torch.tensor(probs, dtype=torch.float64), torch.tensor([1, 0]), 1) == \
        pytest.approx(abs(0.5 - 0.63))


def test_perfectly_confident_and_correct_predictions():
    ctx = logits_context([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [0, 1])
    assert ece(ctx) == 0.0 and mean_confidence(ctx) == 1.0 and output_entropy(ctx) == 0.0
