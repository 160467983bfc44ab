"""The whole pipeline (zoo -> measures -> analysis) with faults in it: diverging runs are recorded with their epoch,
left out of the measures and excluded and counted by the analysis; a code-running final checkpoint planted in a
finished zoo is reported, retrained and never executed, and the tables come out as before.
"""
import hashlib
import io
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from benchmark.pipeline import run_pipeline

PROFILE = """
description = "pipeline faults: one absurd learning rate"
[data]
dataset = "digits"
n_train = 200
n_test = 100
[model]
patch_size = 4
depth = 1
heads = 2
[train]
max_epochs = 8
warmup_epochs = 1
target_ce = 2.1
checkpoint_epochs = [2]
[grid]
variant = ["crate", "crate-c"]
lr = [0.003, 0.01, 1e6]
batch_size = [32]
width = [16]
[measures]
names = ["l2", "path-norm", "srr"]
n_samples = 32
[analysis]
n_boot = 5
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    profile = root / "faults.toml"
    profile.write_text(PROFILE)
    out = root / "out"
    run_pipeline(str(profile), out, workers=1, progress=False, log=lambda *a: None)
    return profile, out


def test_diverged_runs_are_recorded_excluded_and_counted(finished):
    _, out = finished
    models = pd.read_csv(out / "models.csv")
    diverged = models[models["lr"] == 1e6]
    assert len(diverged) == 2 and (diverged["status"] == "diverged").all()
    assert (diverged["error"] == "non-finite loss or weights in epoch 1").all()
    assert (models.loc[models["lr"] != 1e6, "status"] == "done").all()
    measures = pd.read_csv(out / "measures.csv")
    assert sorted(measures["run_id"]) == sorted(models.loc[models["status"] == "done", "run_id"])
    counts = json.loads((out / "analysis_summary.json").read_text())["counts"]
    used = int(((models["status"] == "done") & models["reached_target"].astype(bool)).sum())
    assert counts["by_status"]["diverged"] == 2 and counts["excluded"]["diverged"] == 2
    assert counts["used"] == used >= 3
    correlations = pd.read_csv(out / "correlations.csv")
    assert (correlations["n_models"] <= used).all() and (correlations["n_models"] == used).any()


class WritesMarker:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_planted_code_running_checkpoint_is_reported_retrained_never_run(finished, tmp_path):
    profile, first = finished
    out = Path(shutil.copytree(first, tmp_path / "out"))
    models = pd.read_csv(out / "models.csv")
    victim = models.loc[models["status"] == "done", "run_id"].iloc[0]
    final = out / "runs" / victim / "ckpt" / "final.pt"
    before = final.read_bytes()
    marker = tmp_path / "executed"
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(2), "payload": WritesMarker(marker)}, buffer)
    final.write_bytes(buffer.getvalue())
    final.with_name("final.pt.sha256").write_text(hashlib.sha256(buffer.getvalue()).hexdigest() + "\n")

    lines = []
    run_pipeline(str(profile), out, workers=1, progress=False, log=lines.append)
    assert not marker.exists()
    reported = [line for line in lines if str(final) in line]
    assert len(reported) == 1 and "refused to load" in reported[0] and "retraining" in reported[0]
    assert final.read_bytes() == before
    for name in ("measures.csv", "layerwise.csv", "correlations.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(out / name), pd.read_csv(first / name), check_exact=True)
