"""One contract over every registered measure: finite (or a documented refusal) on a tiny trained model, the same
value for the same seed, the model left unchanged, and one failing measure isolated from the rest."""
import math

import pytest
import torch

import measures
from measures.compute import evaluate_measures, make_context
from measures.margin import MeasureUndefined
from zoo import BadValueError, TrainConfig, build_model, load_dataset, train_model

# the documented refusals on the fixture's model: it stops at training CE ~0.55, above both step thresholds
UNREACHED = {"steps-to-ce-0.1", "steps-ce-0.1-to-0.01"}
OPTIONS = measures.MeasureOptions(n_samples=64, mc_samples=3, search_steps=5, ascent_steps=3, m_sharpness=32)


@pytest.fixture(scope="module")
def trained():
    data = load_dataset("digits", n_train=200)
    torch.manual_seed(0)
    model = build_model("crate", image_size=8, patch_size=4, channels=1, num_classes=10, dim=16, depth=2, heads=2)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    log = []
    train_model(model, data, TrainConfig(lr=4e-3, batch_size=32, max_epochs=30, warmup_epochs=1),
                on_epoch=lambda epoch, state, record: log.append(record))
    return model, init, data, log


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", [m.name for m in measures.available()])
def test_measure_contract(trained, name):
    model, init, data, log = trained
    before = _snapshot(model)
    measure = measures.get_measure(name)
    # a weight-only measure gets a context without data, as compute_zoo gives it: it must not need one
    data = data if measure.needs_data else None
    if name in UNREACHED:
        with pytest.raises(MeasureUndefined, match="never reached"):
            measure(make_context(model, init, data, OPTIONS, log))
        return
    value = measure(make_context(model, init, data, OPTIONS, log))
    again = measure(make_context(model, init, data, OPTIONS, log))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "measure changed the model"
    assert math.isfinite(value), f"{name} = {value}"
    assert value == again, "same seed must give the same value"


def test_failing_measure_is_isolated(trained):
    model, init, data, _ = trained

    @measures.register_measure("test-always-fails", family="test")
    def always_fails(ctx):
        raise MeasureUndefined("deliberately undefined")
    try:
        out = evaluate_measures(make_context(model, init, data, OPTIONS), ["test-always-fails", "l2"])
    finally:
        measures.unregister_measure("test-always-fails")
    assert math.isnan(out["test-always-fails"]["value"])
    assert "deliberately undefined" in out["test-always-fails"]["error"]
    assert math.isfinite(out["l2"]["value"]) and out["l2"]["error"] is None


def test_registering_a_name_twice_raises():
    with pytest.raises(ValueError, match="already registered"):
        measures.register_measure("l2", family="norm")(lambda ctx: 0.0)


def test_unknown_measure_name_lists_the_available_ones():
    with pytest.raises(KeyError, match="available: .*srr"):
        measures.resolve_names(["no-such-measure"])
    assert measures.resolve_names(["srr*"]) == ["srr", "srr-last"]


def test_compute_a_model_without_data_for_weight_only_measures(trained):
    model, init, data, _ = trained
    table = measures.compute(model, None, None, init, ["l2", "ww-alpha"])
    assert table.columns.tolist() == ["l2", "ww-alpha"] and table.notna().all().all()
    assert table.attrs["skipped"] == {} and table.attrs["errors"] == {}
    with pytest.raises(BadValueError, match="'srr' cannot be computed here: it needs data"):
        measures.compute(model, None, None, init, ["l2", "srr"])


def test_compute_a_crate_model_gives_the_values_of_its_context(trained):
    model, init, data, log = trained
    names = ["srr", "path-norm", "neg-margin", "l2-dist-init"]
    table = measures.compute(model, data.x_train, data.y_train, init, names, OPTIONS, training_log=log)
    expected = evaluate_measures(make_context(model, init, data, OPTIONS, log), names)
    assert table.attrs["skipped"] == {}
    assert table.iloc[0].to_dict() == {n: expected[n]["value"] for n in names}
