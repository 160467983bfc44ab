"""zoo.train: deterministic, stops by Jiang et al.'s rule, survives divergence, resumes bit-exactly."""
import math

import pytest
import torch

from zoo.data import load_dataset
from zoo.models import CRATE, ModelConfig
from zoo.store import load_checkpoint, save_checkpoint
from zoo.train import TrainConfig, evaluate, lr_factor, train_model


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", n_train=120, n_test=60)


def new_model(seed=0, variant="crate", dropout=0.0):
    torch.manual_seed(seed)
    return CRATE(ModelConfig(variant=variant, image_size=8, patch_size=4, channels=1, num_classes=10, dim=8,
                             depth=1, heads=2, dropout=dropout))


def cfg(**kw):
    args = dict(lr=3e-3, batch_size=32, max_epochs=3, warmup_epochs=1, target_ce=0.0, seed=0)
    args.update(kw)
    return TrainConfig(**args)


def without_seconds(d):
    return {k: v for k, v in d.items() if k != "seconds"}


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_deterministic_for_a_seed(data):
    a, b, c = new_model(), new_model(), new_model()
    ma = train_model(a, data, cfg())
    mb = train_model(b, data, cfg())
    assert without_seconds(ma) == without_seconds(mb)
    assert_same_weights(a, b)
    mc = train_model(c, data, cfg(seed=1))          # same init, another shuffle: another model
    assert not torch.equal(a.head.weight, c.head.weight)
    assert mc["train_loss"] != ma["train_loss"]


def test_stops_at_target_ce(data):
    # no CE target: runs to max_epochs; the per-epoch train CE is recorded by on_epoch
    history = []
    full = train_model(new_model(), data, cfg(max_epochs=4, lr=1e-2),
                       on_epoch=lambda epoch, get_state, record: history.append(record))
    assert full["status"] == "done" and full["epochs"] == 4 and full["steps"] == 4 * 4  # ceil(120 / 32) = 4
    assert not full["reached_target"]
    losses = [r["train_loss"] for r in history]
    assert len(losses) == 4 and losses[2] < losses[0]
    # a target every model beats at once (CE of a 10-class model near init is ~2.3): one epoch
    once = train_model(new_model(), data, cfg(max_epochs=4, lr=1e-2, target_ce=50.0))
    assert once["reached_target"] and once["epochs"] == 1 and once["steps"] == 4
    # a target first reached after epoch k (same seed, so the same trajectory): stops right there
    k = next(i for i, loss in enumerate(losses) if loss <= losses[2]) + 1
    stopped = train_model(new_model(), data, cfg(max_epochs=4, lr=1e-2, target_ce=losses[2]))
    assert stopped["reached_target"] and stopped["epochs"] == k and stopped["train_loss"] == losses[k - 1]


def test_metrics_are_the_final_models(data):
    model = new_model()
    m = train_model(model, data, cfg())
    assert (m["train_loss"], m["train_acc"]) == evaluate(model, data.x_train, data.y_train)
    assert (m["test_loss"], m["test_acc"]) == evaluate(model, data.x_test, data.y_test)
    assert m["gap_loss"] == m["test_loss"] - m["train_loss"]
    assert m["gap_acc"] == m["train_acc"] - m["test_acc"]
    assert m["diverged_epoch"] is None


def test_evaluate_is_mean_ce_and_accuracy_in_eval_mode(data):
    model = new_model(dropout=0.5).train()
    loss, acc = evaluate(model, data.x_test, data.y_test, batch_size=7)       # sums over batches of 7 (float32 logits: rel 1e-6)
    assert model.training                                                      # mode restored
    model.eval()
    with torch.no_grad():
        logits = model(data.x_test).double()
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(logits, data.y_test).item(), rel=1e-6)
    assert acc == (logits.argmax(1) == data.y_test).sum().item() / len(data.y_test)


def test_diverges_on_huge_lr(data):
    m = train_model(new_model(), data, cfg(lr=1e6, warmup_epochs=0))
    assert m["status"] == "diverged" and m["diverged_epoch"] == 1 and m["epochs"] == 1
    assert not m["reached_target"]
    assert all(math.isnan(m[k]) for k in ("train_loss", "test_loss", "gap_loss", "gap_acc"))


def test_diverges_on_nan_weight(data):
    model = new_model()
    with torch.no_grad():
        model.layers[0].ista.weight[0, 0] = float("nan")
    m = train_model(model, data, cfg())
    assert m["status"] == "diverged" and m["diverged_epoch"] == 1 and m["steps"] == 0


def test_resume_equals_uninterrupted(data, tmp_path):
    """Killed after epoch 2, resumed from the state saved then: same weights and history as a straight run.
    Dropout > 0 so the global RNG (dropout masks) must be restored as well as the shuffle generator."""
    config = cfg(max_epochs=4, lr=1e-2, warmup_epochs=1)
    straight_model = new_model(dropout=0.2)
    straight_history = []
    straight = train_model(straight_model, data, config,
                           on_epoch=lambda e, get_state, record: straight_history.append(record))

    class Killed(Exception):
        pass

    def save_then_die(epoch, get_state, record):
        if epoch == 2:
            save_checkpoint(tmp_path / "state.pt", get_state())   # the real serialization, read back below
            raise Killed

    with pytest.raises(Killed):
        train_model(new_model(dropout=0.2), data, config, on_epoch=save_then_die)
    state = load_checkpoint(tmp_path / "state.pt")
    assert state["epoch"] == 2 and len(state["history"]) == 2

    resumed_model = new_model(seed=123, dropout=0.2)                # its own init is overwritten by the state
    torch.manual_seed(999)                                          # and so is the global RNG
    resumed = train_model(resumed_model, data, config, resume=state)
    assert_same_weights(straight_model, resumed_model)
    assert without_seconds(resumed) == without_seconds(straight)
    assert resumed["epochs"] == 4 and resumed["steps"] == 16

    history = []
    train_model(new_model(dropout=0.2), data, config, resume=load_checkpoint(tmp_path / "state.pt"),
                on_epoch=lambda e, get_state, record: history.append(get_state()["history"]))
    assert [without_seconds(r) for r in history[-1]] == [without_seconds(r) for r in straight_history]

    # the check has teeth: with the dropout RNG of another point in time the weights come out different
    state = load_checkpoint(tmp_path / "state.pt")
    state["torch_rng"] = torch.Generator().manual_seed(7).get_state()
    other = new_model(dropout=0.2)
    train_model(other, data, config, resume=state)
    assert not torch.equal(other.head.weight, straight_model.head.weight)


def test_resume_of_a_finished_state_trains_no_further(data, tmp_path):
    """A state saved at max_epochs (killed before metrics were written) ends at once with the same metrics."""
    config = cfg(max_epochs=2)
    states = []
    model = new_model()
    first = train_model(model, data, config, on_epoch=lambda e, get_state, r: states.append(get_state()))
    save_checkpoint(tmp_path / "state.pt", states[-1])
    again = train_model(new_model(seed=5), data, config, resume=load_checkpoint(tmp_path / "state.pt"))
    assert without_seconds(again) == without_seconds(first)


def test_lr_factor_warmup_then_cosine():
    # warmup 4 steps: (step + 1) / 4; then half-cosine over the remaining 8 steps; 0 from step 12 on
    expected = {0: 0.25, 1: 0.5, 3: 1.0, 4: 1.0, 6: (1 + math.cos(math.pi / 4)) / 2, 8: 0.5, 12: 0.0, 20: 0.0}
    for step, value in expected.items():
        assert lr_factor(step, 4, 12) == pytest.approx(value, abs=1e-15), step
    assert lr_factor(0, 0, 10) == 1.0                              # no warmup: starts at the full lr
    assert lr_factor(5, 0, 10) == pytest.approx(0.5)


def test_lr_in_history_follows_the_schedule(data):
    config = cfg(lr=2e-3, max_epochs=3, warmup_epochs=1)           # 4 steps per epoch: warmup 4, total 12
    records = []
    train_model(new_model(), data, config, on_epoch=lambda e, get_state, r: records.append(r))
    for r in records:                                              # the lr in force after r["step"] steps
        assert r["lr"] == pytest.approx(2e-3 * lr_factor(r["step"], 4, 12), rel=1e-12)
    assert [r["step"] for r in records] == [4, 8, 12] and records[-1]["lr"] == 0.0


@pytest.mark.parametrize("bad,match", [
    (dict(lr=0.0), "lr"), (dict(lr="0.1"), "lr"), (dict(batch_size=0), "batch_size"),
    (dict(batch_size=32.0), "batch_size"), (dict(max_epochs=True), "max_epochs"),
    (dict(label_smoothing=1.0), "label_smoothing"), (dict(target_ce=-1.0), "target_ce"),
])
def test_config_validation_names_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**bad).validate()


def test_device_auto_falls_back_to_cpu_and_unavailable_cuda_is_a_clear_error():
    from zoo.train import resolve_device
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
    else:
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")
