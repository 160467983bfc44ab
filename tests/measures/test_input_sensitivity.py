"""Input-Jacobian norm: exact for a linear model, and equal to torch's per-sample Jacobian on a tiny CRATE."""
import pytest
import torch

from measures.context import MeasureContext
from measures.input_sensitivity import input_jacobian_norms, jacobian_norm
from zoo.models import build_model


def test_linear_model_has_its_weight_as_jacobian():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 3))
    x = torch.randn(4, 1, 2, 3)
    ctx = MeasureContext(model=model, init_state={}, x=x, y=torch.zeros(4, dtype=torch.long), n_train=4)
    assert jacobian_norm(ctx) == pytest.approx(float(model[1].weight.detach().double().norm()), rel=1e-6)


def test_crate_matches_the_per_sample_jacobian():
    torch.manual_seed(0)
    model = build_model("crate-t", image_size=4, patch_size=2, channels=1, num_classes=3, dim=4, depth=1, heads=2)
    model = model.double().eval()
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    expected = [torch.autograd.functional.jacobian(lambda v: model(v[None])[0], x[i]).norm() for i in range(3)]
    assert input_jacobian_norms(model, x).tolist() == pytest.approx([float(e) for e in expected], rel=1e-10)
    assert all(p.grad is None for p in model.parameters())
