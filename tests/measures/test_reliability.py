"""Faults injected into the measures stage: a cache from other options, other weights or half-written is reported
in one line and recomputed; a run whose files cannot be trusted gets NaN and one line, and nothing in it is
executed; a measure that overflows or raises gives NaN with its reason in measures_errors.log.
"""
import hashlib
import io
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from measures import compute_run, compute_zoo, register_measure, unregister_measure
from tests.tiny_profile import runs_of
from measures.layerwise import layerwise_zoo
from zoo.runner import build_zoo, load_zoo

NAMES = ["l2", "path-norm", "srr"]
OPTIONS = {"n_samples": 32}


@pytest.fixture(scope="module")
def measured(profile, tmp_path_factory):
    out = tmp_path_factory.mktemp("measured")
    build_zoo(runs_of(profile), out, workers=1, progress=False, log=lambda *a: None)
    compute_zoo(out, NAMES, options=OPTIONS, progress=False, log=lambda *a: None)
    layerwise_zoo(out, options=OPTIONS, progress=False, log=lambda *a: None)
    return out


@pytest.fixture
def zoo(measured, tmp_path):
    return Path(shutil.copytree(measured, tmp_path / "zoo"))


def measure(zoo, names=NAMES):
    """(measures table, the lines logged between the opening and the summary line, the summary line)."""
    lines = []
    table = compute_zoo(zoo, names, options=OPTIONS, progress=False, log=lines.append)
    return table, lines[1:-1], lines[-1]


def summary_line(zoo, names=NAMES):
    return measure(zoo, names)[2]


def ids(zoo):
    return load_zoo(zoo)["run_id"].tolist()


# --- caches ---------------------------------------------------------------------------------------------------

def edit_options(path: Path):
    cache = json.loads(path.read_text())
    cache["options"]["n_samples"] = 999
    path.write_text(json.dumps(cache))


def copy_other_runs_cache(path: Path):
    other = next(p for p in path.parent.parent.glob("*/measures.json") if p != path)
    shutil.copy(other, path)


def half_write(path: Path):
    path.write_bytes(path.read_bytes()[:40])


@pytest.mark.parametrize("damage, reason", [(edit_options, "other measure options"),
                                            (copy_other_runs_cache, "other weights"),
                                            (half_write, "unreadable JSON")])
def test_mismatched_or_corrupt_cache_is_reported_and_recomputed(zoo, damage, reason):
    before = pd.read_csv(zoo / "measures.csv")
    victim = ids(zoo)[1]
    cache = zoo / "runs" / victim / "measures.json"
    damage(cache)
    table, lines, summary = measure(zoo)
    assert len(lines) == 1 and str(cache) in lines[0] and reason in lines[0] and "recomputing" in lines[0]
    assert "3 values computed, 9 from cache" in summary                 # that run's values only
    pd.testing.assert_frame_equal(table, before, check_exact=True)
    assert json.loads(cache.read_text())["options"]["n_samples"] == 32
    assert "0 values computed, 12 from cache" in summary_line(zoo)    # the repaired cache serves the next call


def test_a_changed_code_fingerprint_recomputes_only_that_measure(zoo):
    victim = ids(zoo)[0]
    cache = zoo / "runs" / victim / "measures.json"
    data = json.loads(cache.read_text())
    data["values"]["srr"]["code"] = "computed by other code"
    cache.write_text(json.dumps(data))
    assert "1 values computed, 11 from cache" in summary_line(zoo)


def test_keep_existing_adds_the_named_measures_and_keeps_the_other_columns(zoo):
    before = pd.read_csv(zoo / "measures.csv")

    @register_measure("test-one", family="test", needs_data=False)
    def one(ctx):
        """1.0 for every model."""
        return 1.0
    try:
        lines = []
        table = compute_zoo(zoo, ["test-one"], options=OPTIONS, progress=False, keep_existing=True,
                            log=lines.append)
        assert "4 values computed, 12 from cache" in lines[-1]          # the new measure only
        assert list(table.columns) == ["run_id", *NAMES, "test-one"] and (table["test-one"] == 1.0).all()
        pd.testing.assert_frame_equal(pd.read_csv(zoo / "measures.csv")[before.columns], before)
        # without keep_existing the table is what was asked for (a profile's list, a library call)
        assert list(measure(zoo, ["l2"])[0].columns) == ["run_id", "l2"]
    finally:
        unregister_measure("test-one")


def test_keep_existing_drops_unregistered_columns_and_ignores_an_unreadable_table(zoo):
    table = pd.read_csv(zoo / "measures.csv")
    table.assign(**{"gone-plugin": 1.0}).to_csv(zoo / "measures.csv", index=False)
    lines = []
    table = compute_zoo(zoo, ["l2"], options=OPTIONS, progress=False, keep_existing=True, log=lines.append)
    assert list(table.columns) == ["run_id", *NAMES]
    assert lines[0] == (f"measures: 1 column(s) of {zoo / 'measures.csv'} belong to no registered measure and are "
                        f"dropped: gone-plugin")
    (zoo / "measures.csv").write_text("")
    lines = []
    table = compute_zoo(zoo, ["l2"], options=OPTIONS, progress=False, keep_existing=True, log=lines.append)
    assert list(table.columns) == ["run_id", "l2"] and "unreadable" in lines[0]


# --- runs that cannot be trusted ------------------------------------------------------------------------------

class WritesMarker:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def malicious_final(run: Path, marker: Path) -> Path:
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(2), "payload": WritesMarker(marker)}, buffer)
    final = run / "ckpt" / "final.pt"
    final.write_bytes(buffer.getvalue())
    (run / "ckpt" / "final.pt.sha256").write_text(hashlib.sha256(buffer.getvalue()).hexdigest() + "\n")
    return final


def truncated_final(run: Path, marker: Path) -> Path:
    final = run / "ckpt" / "final.pt"
    final.write_bytes(final.read_bytes()[:1000])
    return final


def edited_config(run: Path, marker: Path) -> Path:
    config = run / "config.json"
    config.write_text(config.read_text().replace('"lr": 0.01', '"lr": 0.02').replace('"lr": 0.003', '"lr": 0.02'))
    return config


@pytest.mark.parametrize("fault, reason", [(malicious_final, "refused to load"), (truncated_final, "checksum"),
                                           (edited_config, "does not match")])
def test_untrusted_run_gets_nan_and_one_line_and_is_never_executed(profile, zoo, tmp_path, fault, reason):
    before = pd.read_csv(zoo / "measures.csv").set_index("run_id")
    layerwise_before = pd.read_csv(zoo / "layerwise.csv")
    victim = ids(zoo)[2]
    marker = tmp_path / "executed"
    bad = fault(zoo / "runs" / victim, marker)

    table, lines, _ = measure(zoo)
    assert not marker.exists()
    culprit = [line for line in lines if str(bad) in line]
    assert len(culprit) == 1 and reason in culprit[0] and victim in culprit[0], lines
    table = table.set_index("run_id")
    assert table.loc[victim].isna().all()                                         # never a value from it
    pd.testing.assert_frame_equal(table.drop(index=victim), before.drop(index=victim), check_exact=True)
    errors = (zoo / "measures_errors.log").read_text().splitlines()
    assert sorted(line.split("\t")[1] for line in errors if line.startswith(victim)) == sorted(NAMES)
    assert all("StoreError" in line for line in errors if line.startswith(victim))

    lines = []
    layerwise = layerwise_zoo(zoo, options=OPTIONS, progress=False, log=lines.append)
    assert not marker.exists()
    left_out = [line for line in lines if line.startswith(f"layerwise: run {victim} left out (StoreError: {bad}")]
    assert len(left_out) == 1 and reason in left_out[0], lines
    assert set(layerwise["run_id"]) == set(ids(zoo)) - {victim}
    pd.testing.assert_frame_equal(layerwise.reset_index(drop=True),
                                  layerwise_before[layerwise_before["run_id"] != victim].reset_index(drop=True))

    # the zoo stage redoes the run (to the same weights): its values come back, equal to the first ones
    build_zoo(runs_of(profile), zoo, workers=1, progress=False, log=lambda *a: None)
    table, _, _ = measure(zoo)
    assert not marker.exists()
    pd.testing.assert_frame_equal(table.set_index("run_id"), before, check_exact=True)


# --- measures that overflow or raise --------------------------------------------------------------------------

@pytest.fixture
def overflowing_measures():
    @register_measure("test-overflow", family="test")
    def overflow(ctx):
        """exp of a large number: inf in float64."""
        return np.exp(np.float64(1000.0))

    @register_measure("test-raises", family="test")
    def raises(ctx):
        """math.exp overflows with an exception."""
        return math.exp(1000.0)

    yield ["test-overflow", "test-raises"]
    unregister_measure("test-overflow")
    unregister_measure("test-raises")


def test_overflowing_measures_give_nan_with_a_logged_reason(zoo, overflowing_measures):
    with np.errstate(over="ignore"):
        lines = []
        table = compute_zoo(zoo, ["l2", *overflowing_measures], options=OPTIONS, progress=False, log=lines.append)
    assert table[overflowing_measures].isna().all().all() and np.isfinite(table["l2"]).all()
    assert "8 failed" in lines[-1]
    errors = (zoo / "measures_errors.log").read_text().splitlines()
    assert len(errors) == 8
    for run_id in table["run_id"]:
        assert f"{run_id}\ttest-overflow\tnon-finite value inf" in errors
        assert f"{run_id}\ttest-raises\tOverflowError: math range error" in errors
    cached = json.loads((zoo / "runs" / table["run_id"][0] / "measures.json").read_text())["values"]
    assert math.isnan(cached["test-overflow"]["value"]) and cached["test-overflow"]["error"] == "non-finite value inf"


def test_weight_only_measures_never_load_the_dataset(zoo, monkeypatch):
    def no_data(*args, **kwargs):
        raise AssertionError("the dataset was loaded for needs_data=False measures")
    # sys.modules: the package's attribute `measures.compute` is the function, not the module
    monkeypatch.setattr(sys.modules["measures.compute"], "cached_dataset", no_data)
    for run_id in ids(zoo):
        (zoo / "runs" / run_id / "measures.json").unlink()
    table, lines, summary = measure(zoo, ["l2", "path-norm", "ww-alpha"])
    assert "12 values computed" in summary and "0 failed" in summary, (lines, summary)
    assert np.isfinite(table[["l2", "path-norm", "ww-alpha"]].to_numpy()).all()


def test_layerwise_cache_of_other_code_is_recomputed(zoo):
    victim = ids(zoo)[0]
    cache = zoo / "runs" / victim / "layerwise.json"
    data = json.loads(cache.read_text())
    data["code"] = "computed by other code"
    cache.write_text(json.dumps(data))
    lines = []
    layerwise_zoo(zoo, options=OPTIONS, progress=False, log=lines.append)
    assert lines == [f"layerwise: {cache}: computed with other code of the SRR modules; recomputing"]
    assert json.loads(cache.read_text())["code"] != "computed by other code"


def test_compute_run_gives_the_row_of_the_zoo_table(zoo):
    table = compute_zoo(zoo, NAMES, options=OPTIONS, progress=False, log=lambda *a: None)
    run_id = ids(zoo)[0]
    row = compute_run(zoo / "runs" / run_id, NAMES, **OPTIONS)
    assert row.columns.tolist() == ["run_id", *NAMES]
    assert row.iloc[0].to_dict() == table.set_index("run_id").loc[run_id].to_dict() | {"run_id": run_id}
