"""zoo.shift: the shifted test set is a fixed, seeded, hand-checkable transform of the test images."""
import numpy as np
import pytest
import torch

from zoo.shift import SHIFT, SHIFT_VERSION, Shift, shift_identity, shift_images


def test_shift_is_the_hand_built_transform():
    """Back to pixels, + σ·N(0, 1) from the split seed's own stream, clipped to [0, 1], normalised again."""
    mean, std = (0.25,), (0.5,)
    pixels = torch.tensor([[[[0.0, 0.5], [1.0, 0.25]]]])               # (1, 1, 2, 2) in [0, 1]
    x = (pixels - 0.25) / 0.5
    noise = np.random.default_rng([7, 0x51F7]).standard_normal((1, 1, 2, 2))
    expected = (np.clip(pixels.numpy().astype(np.float64) + 0.26 * noise, 0, 1) - 0.25) / 0.5
    got = shift_images(x, mean, std, seed=7)
    assert got.dtype == torch.float32 and got.shape == x.shape
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-6)
    assert torch.equal(got, shift_images(x, mean, std, seed=7))       # deterministic
    assert not torch.equal(got, shift_images(x, mean, std, seed=8))   # seeded by the split seed


def test_clipping_keeps_pixels_in_range_per_channel():
    mean, std = (0.1, 0.9), (0.2, 0.4)
    x = torch.randn(50, 2, 3, 3)
    pixels = shift_images(x, mean, std, seed=0, shift=Shift(sigma=5.0)) * torch.tensor(std).view(1, 2, 1, 1) \
        + torch.tensor(mean).view(1, 2, 1, 1)
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    assert ((pixels.abs() < 1e-6) | ((pixels - 1).abs() < 1e-6)).float().mean() > 0.8  # σ = 5 saturates


def test_zero_noise_changes_nothing_inside_the_range():
    x = torch.tensor([[[[-0.5, 0.0], [0.5, 1.0]]]])
    out = shift_images(x, (0.5,), (0.25,), seed=3, shift=Shift(sigma=0.0))
    torch.testing.assert_close(out, x, rtol=0, atol=1e-6)


def test_pinned_output_and_identity():
    """A change to what the shift computes must bump SHIFT_VERSION (the identity runs are recorded under)."""
    x = torch.zeros(1, 1, 1, 3)
    got = shift_images(x, (0.5,), (0.5,), seed=0)
    # pixels 0.5 + 0.26 * (-1.7745, 0.2738, -0.6638), normalised (numpy's stream [0, 0x51F7])
    np.testing.assert_allclose(got.flatten().numpy(), [-0.92272192, 0.14237869, -0.34518021], atol=1e-6)
    assert (SHIFT.name, SHIFT.sigma, SHIFT_VERSION) == ("gaussian-noise", 0.26, 1)
    assert shift_identity() == "gaussian-noise sigma=0.26 v1"
    assert shift_identity(Shift(sigma=0.5)) == "gaussian-noise sigma=0.5 v1"


@pytest.mark.parametrize("n", [1, 5])
def test_each_image_gets_its_own_noise(n):
    x = torch.zeros(n, 1, 4, 4)
    out = shift_images(x, (0.5,), (0.25,), seed=0)
    assert len({tuple(img.flatten().tolist()) for img in out}) == n


def test_docstring_example():
    import doctest
    from zoo import shift
    failures, tried = doctest.testmod(shift)
    assert failures == 0 and tried >= 2
