"""zoo.stopping: the training set is evaluated in full only where it can decide the stop, and the stops, weights
and final metrics are those of a full evaluation every epoch."""
import math

import torch

from tests.zoo.test_train import assert_same_weights, new_model, train, without_seconds
from zoo import stopping
from zoo.data import load_dataset
from zoo.models import crate_forward
from zoo.optimizer import FlatParameters
from zoo.stopping import BOUND_SAFETY, decisive_ce, evaluate_members, evaluate_train_set


def history(o) -> list[dict]:
    """A member's per-epoch log rows as written (NaN where a set was not evaluated)."""
    return o.states[max(o.states)]["history"]


PROBED = [(3e-2, 0.0, 0), (1e-2, 0.1, 1), (2e-2, 0.0, 2)]   # train CE from ~2.35 down to ~1.83 in 10 epochs


def test_probed_train_ce_gives_the_full_pass_rules_stops_and_weights(data, monkeypatch):
    kw = dict(max_epochs=10, target_ce=1.85, checkpoint_epochs=(2,))
    monkeypatch.setattr(stopping, "PROBE_IMAGES", 10 ** 9)            # the rule as written: a full pass every epoch
    full = train(data, PROBED, **kw)
    monkeypatch.setattr(stopping, "PROBE_IMAGES", 100)                # bound = CE of 100 images * 100 / 120
    probed = train(data, PROBED, **kw)
    assert [o.metrics["epochs"] for o in full] == [8, 10, 10]          # the check has teeth: one stops at the target
    for f, p in zip(full, probed):
        assert_same_weights(f.weights, p.weights)
        assert without_seconds(f.metrics) == without_seconds(p.metrics)     # final train/test CE and accuracy
        assert f.finished_after == p.finished_after
        rows_full, rows_probed = history(f), history(p)
        assert [r["epoch"] for r in rows_full] == [r["epoch"] for r in rows_probed]
        for a, b in zip(rows_full, rows_probed):
            kept = b["epoch"] in (2, p.metrics["epochs"])
            for key in ("train_loss", "train_acc"):            # where the train CE is recorded, it is the full pass's
                assert a[key] == b[key] or math.isnan(b[key]) and not kept and a["train_loss"] > 1.85 * BOUND_SAFETY
            for key in ("test_loss", "test_acc"):              # the test set only at kept epochs
                assert (a[key] == b[key]) if kept else math.isnan(b[key])
    skipped = [r["epoch"] for r in history(probed[1]) if math.isnan(r["train_loss"])]
    assert skipped == [1, 3, 4, 5, 6]                          # the slow member's first epochs (2 is kept)


def test_the_probe_bounds_the_train_ce_from_below_with_the_full_passs_logits(data):
    x = load_dataset("digits", n_train=600).x_train
    models = [new_model(seed, dim=32) for seed in range(3)]
    stack = FlatParameters(models, torch.device("cpu"))
    with torch.no_grad():
        logits = crate_forward(models[0].config, stack.params, x)
        for k in (32, 128, 300):    # a prefix of the images gives the same logits bit for bit (CPU): the bound is safe
            assert torch.equal(crate_forward(models[0].config, stack.params, x[:k]), logits[:, :k])
    y = load_dataset("digits", n_train=600).y_train
    exact = evaluate_members(models[0].config, stack.params, x, y, 1024)
    assert evaluate_train_set(models[0].config, stack.params, x, y, 1024, [0.3] * 3, [False, True, False]) == \
        [None, exact[1], None]                                 # CE ~2.3: 128 images prove it above 0.3, unless forced
    assert evaluate_train_set(models[0].config, stack.params, x, y, 1024, [0.6] * 3, [False] * 3) == exact  # 0.49<0.6
    assert evaluate_train_set(models[0].config, stack.params, x, y, 1024, [0.3, 0.6, 0.3], [False] * 3) == \
        [None, exact[1], None]                                 # each member against its own threshold


def test_the_first_epoch_at_each_ce_milestone_is_evaluated_in_full():
    # steps-to-ce-0.1 reads the first epoch with train CE <= 0.1 from log.csv: until a run has logged one, the
    # bound must prove CE > 0.1, not only CE > the target, to skip the full pass
    assert decisive_ce([], 0.01) == 0.1
    assert decisive_ce([{"train_loss": 0.4}, {"train_loss": float("nan")}], 0.01) == 0.1
    assert decisive_ce([{"train_loss": 0.4}, {"train_loss": 0.1}], 0.01) == 0.01   # reached: the target decides
    assert decisive_ce([], 0.2) == 0.2                         # a milestone below the target never decides
    assert decisive_ce([{"train_loss": 0.05}], 0.005) == 0.01   # then 0.01, for steps-ce-0.1-to-0.01
