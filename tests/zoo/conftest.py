import pytest

from zoo.data import load_dataset


@pytest.fixture(scope="module")
def data():
    """120 training and 60 test digits: 4 steps of 32 per epoch, the training loop's tests' data."""
    return load_dataset("digits", n_train=120, n_test=60)
