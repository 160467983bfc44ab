"""zoo.train, the one training loop: a run is a group of one; a member trains as it would alone (group, stopping,
divergence, resume); Jiang et al.'s stopping rule; bit-exact resume; the extra-loss hook."""
import math

import pytest
import torch

from benchmark.reference import train_plain
from zoo.models import CRATE, ModelConfig
from zoo.store import load_checkpoint, save_checkpoint
from zoo.train import STATE_FORMAT, TrainConfig, evaluate, lr_factor, resolve_device, train_ensemble, train_model

# (lr, dropout, seed) of three members that differ in everything a group allows
MEMBERS = [(3e-3, 0.0, 0), (1e-2, 0.1, 1), (5e-3, 0.0, 2)]


def new_model(seed=0, dropout=0.0, dim=8, variant="crate"):
    torch.manual_seed(seed)
    return CRATE(ModelConfig(variant=variant, image_size=8, patch_size=4, channels=1, num_classes=10, dim=dim,
                             depth=1, heads=2, dropout=dropout))


def cfg(**kw):
    args = dict(lr=3e-3, batch_size=32, max_epochs=3, warmup_epochs=1, target_ce=0.0, seed=0)
    args.update(kw)
    return TrainConfig(**args)


class Outcome:
    """What train_ensemble reported for one member: its metrics, final weights, latest state, callback order."""
    metrics: dict
    weights: dict
    finished_after: int       # number of on_epoch calls (all members) before its on_finish

    def __init__(self):
        self.states = {}      # epoch -> get_state() at that epoch


def train(data, members, resume=None, variant="crate", init_seed=None, extra_loss=None, **train_kw) -> list[Outcome]:
    """Train fresh models of ``members`` ((lr, dropout, seed) each) as one ensemble; each model is initialised
    with its member's seed, or with ``init_seed`` (for a resume, whose state must then bring the weights)."""
    models = [new_model(seed if init_seed is None else init_seed, dropout, variant=variant)
              for _, dropout, seed in members]
    cfgs = [cfg(lr=lr, seed=seed, **train_kw) for lr, _, seed in members]
    out = [Outcome() for _ in members]
    epochs_seen = []

    def on_epoch(e, epoch, get_state, record):
        out[e].states[epoch] = get_state()
        epochs_seen.append((e, epoch))

    def on_finish(e, metrics, weights):
        out[e].metrics, out[e].weights, out[e].finished_after = metrics, weights, len(epochs_seen)

    results = train_ensemble(models, [f"m{i}" for i in range(len(members))], cfgs, data, resume=resume,
                             on_epoch=on_epoch, on_finish=on_finish, extra_loss=extra_loss)
    for o, r in zip(out, results):
        assert o.metrics is r
    return out


def history(o: Outcome) -> list[dict]:
    """The member's full per-epoch history (its latest state's), without wall time."""
    return [without_seconds(r) for r in o.states[max(o.states)]["history"]]


def without_seconds(d):
    """Without wall time; NaN (a set not evaluated) as a string, so that rows read back from a file compare."""
    return {k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in d.items() if k != "seconds"}


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def assert_same_member(a: Outcome, b: Outcome):
    assert_same_weights(a.weights, b.weights)
    assert without_seconds(a.metrics) == without_seconds(b.metrics)
    assert history(a) == history(b)


# --- a run is a group of one; a member's result does not depend on its group -----------------------------------

def test_train_model_is_a_group_of_one_with_the_weights_copied_back(data):
    model = new_model(1, 0.1)
    metrics = train_model(model, data, cfg(lr=1e-2, seed=1))
    alone = train(data, [MEMBERS[1]])[0]
    assert without_seconds(metrics) == without_seconds(alone.metrics)
    assert_same_weights(model.state_dict(), alone.weights)
    # deterministic, and the seed matters: same init with another data order and dropout masks is another model
    other = new_model(1, 0.1)
    train_model(other, data, cfg(lr=1e-2, seed=2))
    assert not torch.equal(other.head.weight, model.head.weight)


@pytest.mark.parametrize("variant", ["crate", "crate-fix"])     # crate-fix: a frozen output map beside the flat one
def test_member_trains_as_it_would_alone(data, variant):
    group = train(data, MEMBERS, variant=variant)
    for i, member in enumerate(MEMBERS):
        alone = train(data, [member], variant=variant)[0]
        assert_same_member(group[i], alone)
    assert group[0].metrics["epochs"] == 3 and group[0].metrics["steps"] == 3 * 4   # ceil(120 / 32) = 4
    # the check has teeth: the members did train to different weights
    assert not torch.equal(group[0].weights["head.weight"], group[2].weights["head.weight"])


def test_member_result_does_not_depend_on_its_place_in_the_group(data):
    forward, backward = train(data, MEMBERS), train(data, MEMBERS[::-1])
    for i in range(3):
        assert_same_member(forward[i], backward[2 - i])


def test_metrics_agree_with_the_plain_loop_to_float_rounding(data):
    # not bit for bit: torch.optim.AdamW and batched gradient reductions sum in another order; the forward pass and
    # the dropout masks are the same
    group = train(data, MEMBERS)
    for (lr, dropout, seed), o in zip(MEMBERS, group):
        plain = train_plain(new_model(seed, dropout), data, cfg(lr=lr, seed=seed))
        for key in ("train_loss", "test_loss", "test_acc"):
            assert o.metrics[key] == pytest.approx(plain[key], rel=1e-4), (lr, dropout, seed, key)
        assert (o.metrics["epochs"], o.metrics["steps"]) == (plain["epochs"], plain["steps"])


def test_metrics_are_evaluate_of_the_saved_weights(data):
    group = train(data, MEMBERS, eval_batch_size=50)           # 120 and 60 examples: sums over several batches
    for (_, dropout, seed), o in zip(MEMBERS, group):
        model = new_model(seed + 100, dropout)
        model.load_state_dict(o.weights)
        assert (o.metrics["train_loss"], o.metrics["train_acc"]) == evaluate(model, data.x_train, data.y_train, 50)
        assert (o.metrics["test_loss"], o.metrics["test_acc"]) == evaluate(model, data.x_test, data.y_test, 50)
        assert o.metrics["gap_loss"] == o.metrics["test_loss"] - o.metrics["train_loss"]
        assert o.metrics["gap_acc"] == o.metrics["train_acc"] - o.metrics["test_acc"]
        assert o.metrics["diverged_epoch"] is None


def test_evaluate_is_mean_ce_and_accuracy_in_eval_mode(data):
    model = new_model(dropout=0.5).train()
    loss, acc = evaluate(model, data.x_test, data.y_test, batch_size=7)       # sums over batches of 7 (rel 1e-6)
    assert model.training                                                      # mode restored
    model.eval()
    with torch.no_grad():
        logits = model(data.x_test).double()
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(logits, data.y_test).item(), rel=1e-6)
    assert acc == (logits.argmax(1) == data.y_test).sum().item() / len(data.y_test)


# --- stopping and divergence -----------------------------------------------------------------------------------

FAST, SLOW = (3e-2, 0.0, 0), (1e-3, 0.1, 1)


def test_a_target_every_model_beats_at_once_stops_after_one_epoch(data):
    once = train_model(new_model(), data, cfg(max_epochs=4, lr=1e-2, target_ce=50.0))   # CE near init is ~2.3
    assert once["reached_target"] and once["epochs"] == 1 and once["steps"] == 4 and once["status"] == "done"


@pytest.mark.parametrize("variant", ["crate", "crate-fix"])
def test_a_member_reaching_the_target_stops_while_the_others_continue(data, variant):
    free = train(data, [FAST, SLOW, SLOW[:2] + (2,)], max_epochs=4, variant=variant)
    fast_losses = [r["train_loss"] for r in history(free[0])]
    target = fast_losses[1]
    k = next(i for i, loss in enumerate(fast_losses) if loss <= target) + 1       # first epoch at the target
    assert k < 4
    assert all(r["train_loss"] > target for o in free[1:] for r in history(o))  # the slow ones never reach it

    group = train(data, [FAST, SLOW, SLOW[:2] + (2,)], max_epochs=4, target_ce=target, variant=variant)
    fast = group[0]
    assert fast.metrics["reached_target"] and fast.metrics["epochs"] == k and fast.metrics["status"] == "done"
    assert fast.metrics["train_loss"] == fast_losses[k - 1]
    assert fast.finished_after == 3 * k                         # on_finish right after its epoch k, before k + 1
    for o in group[1:]:
        assert not o.metrics["reached_target"] and o.metrics["epochs"] == 4 and max(o.states) == 4
    assert_same_member(fast, train(data, [FAST], max_epochs=4, target_ce=target, variant=variant)[0])
    # the slow ones, trained on after the fast one left the stack, are also as they would be alone
    assert_same_member(group[1], train(data, [SLOW], max_epochs=4, target_ce=target, variant=variant)[0])


def test_a_diverging_member_leaves_the_others_unchanged(data):
    huge = (1e6, 0.0, 3)
    group = train(data, [MEMBERS[0], huge, MEMBERS[1]], warmup_epochs=0)
    m = group[1].metrics
    assert m["status"] == "diverged" and m["diverged_epoch"] == 1 and m["epochs"] == 1
    assert not m["reached_target"]
    assert all(math.isnan(m[k]) for k in ("train_loss", "test_loss", "gap_loss", "gap_acc"))
    without = train(data, [MEMBERS[0], MEMBERS[1]], warmup_epochs=0)
    assert_same_member(group[0], without[0])
    assert_same_member(group[2], without[1])
    assert group[0].metrics["status"] == group[2].metrics["status"] == "done"


def test_diverges_on_nan_weight(data):
    model = new_model()
    with torch.no_grad():
        model.layers[0].ista.weight[0, 0] = float("nan")
    m = train_model(model, data, cfg())
    assert m["status"] == "diverged" and m["diverged_epoch"] == 1 and m["steps"] == 0


# --- resume ----------------------------------------------------------------------------------------------------

def test_resume_from_epoch_two_equals_uninterrupted(data, tmp_path):
    """States saved after epoch 2 (the real serialization, read back), resumed into models of another init and
    with the global RNG moved: same weights, metrics and history. Member 1 has dropout, so its dropout generator
    must be restored as well as the shuffle generator."""
    straight = train(data, MEMBERS, max_epochs=4)
    for e, o in enumerate(straight):
        save_checkpoint(tmp_path / f"state-{e}.pt", o.states[2])
    torch.manual_seed(999)
    states = [load_checkpoint(tmp_path / f"state-{e}.pt") for e in range(3)]
    assert all(s["format"] == STATE_FORMAT and s["epoch"] == 2 and len(s["history"]) == 2 for s in states)
    resumed = train(data, MEMBERS, max_epochs=4, resume=states, init_seed=100)
    for a, b in zip(straight, resumed):
        assert_same_member(a, b)
        assert min(b.states) == 3                               # it did not train epochs 1 and 2 again
    # the check has teeth: with the dropout generator of another point in time member 1 comes out different
    states[1]["dropout_rng"] = torch.Generator().manual_seed(7).get_state()
    other = train(data, MEMBERS[1:2], max_epochs=4, resume=states[1:2], init_seed=100)[0]
    assert not torch.equal(other.weights["head.weight"], straight[1].weights["head.weight"])


def test_members_resumed_from_different_epochs_equal_uninterrupted(data):
    straight = train(data, MEMBERS, max_epochs=4)
    resumed = train(data, MEMBERS, max_epochs=4, resume=[straight[0].states[1], straight[1].states[2], None])
    for a, b in zip(straight, resumed):
        assert_same_member(a, b)
    assert (min(resumed[0].states), min(resumed[1].states), min(resumed[2].states)) == (2, 3, 1)


def test_train_model_resumes_from_its_saved_state(data):
    config = cfg(max_epochs=4, lr=1e-2)
    straight_model, states = new_model(dropout=0.2), {}
    straight = train_model(straight_model, data, config,
                           on_epoch=lambda e, get_state, r: states.update({e: get_state()}))
    resumed_model = new_model(seed=123, dropout=0.2)
    resumed = train_model(resumed_model, data, config, resume=states[2])
    assert without_seconds(resumed) == without_seconds(straight)
    assert_same_weights(resumed_model.state_dict(), straight_model.state_dict())


def test_resume_of_a_finished_state_trains_no_further(data):
    """States saved at max_epochs (killed before the metrics were written) end at once with the same results."""
    straight = train(data, MEMBERS, max_epochs=3)
    resumed = train(data, MEMBERS, max_epochs=3, resume=[o.states[3] for o in straight], init_seed=100)
    for a, b in zip(straight, resumed):
        assert_same_weights(a.weights, b.weights)
        assert without_seconds(a.metrics) == without_seconds(b.metrics)
        assert b.states == {} and b.finished_after == 0


def test_resume_restores_the_frozen_output_map_of_crate_fix(data):
    straight = train(data, MEMBERS[:1], max_epochs=4, variant="crate-fix")
    resumed = train(data, MEMBERS[:1], max_epochs=4, variant="crate-fix", init_seed=100,
                    resume=[straight[0].states[2]])
    name = "layers.0.attn.output_map.linear.weight"
    assert torch.equal(resumed[0].weights[name], straight[0].states[2]["model"][name])
    assert_same_member(straight[0], resumed[0])


def test_resume_state_of_another_format_is_refused(data):
    old = {"model": new_model().state_dict(), "optimizer": {}, "epoch": 1}     # the former train_model format
    with pytest.raises(ValueError, match="not a training state of format 'ensemble-1'"):
        train_model(new_model(), data, cfg(), resume=old)


def test_members_with_different_batch_sizes_are_refused(data):
    with pytest.raises(ValueError, match="batch size"):
        train_ensemble([new_model(0), new_model(1)], ["a", "b"], [cfg(), cfg(batch_size=16, seed=1)], data)


def test_members_with_different_architectures_are_refused(data):
    with pytest.raises(ValueError, match="architecture"):
        train_ensemble([new_model(0), new_model(1, dim=16)], ["a", "b"], [cfg(), cfg(seed=1)], data)


# --- the extra-loss hook ---------------------------------------------------------------------------------------

def test_extra_loss_sees_the_steps_features_and_adds_to_each_members_loss(data):
    calls = []

    def zero(params, features, y):
        calls.append((params["head.weight"].shape[0], len(features), features[0]["Z_out"].shape, y.shape))
        assert all((f["Z_out"] >= 0).all() for f in features)              # ISTA outputs, with the graph
        return 0.0 * features[-1]["Z_out"].sum(dim=(1, 2, 3))
    plain, hooked = train(data, MEMBERS, max_epochs=2), train(data, MEMBERS, max_epochs=2, extra_loss=zero)
    for a, b in zip(plain, hooked):
        assert_same_member(a, b)                                # a zero term changes no bit
    assert calls[0] == (3, 1, (3, 32, 5, 8), (3, 32)) and len(calls) == 2 * 4   # E, depth, (E, B, N, d), (E, B)

    def poison_member_1(params, features, y):                   # a non-finite term diverges that member only
        members = params["head.weight"].shape[0]
        return torch.tensor([0.0, math.nan, 0.0]) if members == 3 else torch.zeros(members)
    poisoned = train(data, MEMBERS, max_epochs=2, extra_loss=poison_member_1)
    assert poisoned[1].metrics["status"] == "diverged" and poisoned[1].metrics["diverged_epoch"] == 1
    assert_same_member(poisoned[0], plain[0])
    assert_same_member(poisoned[2], plain[2])


def test_extra_loss_changes_the_training(data):
    def push_bias(params, features, y):                         # pulls the head bias: another trajectory
        return params["head.bias"].sum(dim=1)
    hooked = train(data, MEMBERS[:1], max_epochs=1, extra_loss=push_bias)[0]
    plain = train(data, MEMBERS[:1], max_epochs=1)[0]
    assert (hooked.weights["head.bias"] < plain.weights["head.bias"]).all()   # descent on sum(bias) lowers each


# --- schedule, config, device ----------------------------------------------------------------------------------

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
    (dict(max_epochs=4, checkpoint_epochs=(2, 5)), r"checkpoint_epochs \[5\] lie beyond max_epochs = 4"),
])
def test_config_validation_names_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**bad).validate()


def test_device_auto_falls_back_to_cpu_and_unavailable_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
    else:
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")
