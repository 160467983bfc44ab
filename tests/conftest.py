import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    # The product trains every run on one thread (zoo.runner.TRAIN_THREADS) so results do not depend on the
    # worker count; the tests do the same, which also keeps tiny tensors fast on a busy 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    """The tiny profile (tests/tiny_profile.py) written to a file and loaded as a user's would be."""
    from benchmark.profiles import resolve_profile
    from tests.tiny_profile import TINY_PROFILE
    path = tmp_path_factory.mktemp("profile") / "tiny.toml"
    path.write_text(TINY_PROFILE)
    return resolve_profile(path)
