"""The command line as a user drives it: the pipeline on the smoke profile, and the README's worked example of
adding a measure (its code is taken from the README itself, so the README cannot drift from what works)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]


def srrbench(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "benchmark", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, cwd=cwd or ROOT, timeout=600)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    result = srrbench("run", "--profile", "smoke", "--out", str(out), "--workers", "2", "--quiet")
    assert result.returncode == 0, result.stderr
    return out, result


def test_run_pipeline_writes_every_stage_and_points_to_the_report(smoke_run):
    out, result = smoke_run
    for name in ("models.csv", "measures.csv", "layerwise.csv", "correlations.csv", "report.md", "report.html"):
        assert (out / name).exists(), name
    assert f"Report: {out / 'report.html'}" in result.stdout
    models = pd.read_csv(out / "models.csv")
    measures = pd.read_csv(out / "measures.csv")
    assert len(models) == 8 and set(measures["run_id"]) == set(models["run_id"])


def test_rerun_redoes_nothing(smoke_run):
    out, _ = smoke_run
    result = srrbench("run", "--profile", "smoke", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "8 already finished, 0 to train" in result.stdout
    assert re.search(r"measures: 0 values computed", result.stdout)


def test_the_zoo_records_the_shifted_gap_and_analyze_accepts_it(smoke_run):
    """models.csv of the smoke run holds the shifted gap of every run; `--gap gap_shift` is a choice of analyze and
    run (analyze_zoo's ranking against it is tested in tests/analysis/test_report.py)."""
    from benchmark.cli import build_parser
    out, _ = smoke_run
    models = pd.read_csv(out / "models.csv")
    assert (models["gap_shift"] == models["test_loss_shift"] - models["train_loss"]).all()
    assert (models["test_loss_shift"] > models["test_loss"]).all() and models["test_acc_shift"].between(0, 1).all()
    assert "## I.i.d. and shifted gap side by side" in (out / "report.md").read_text()
    assert set(pd.read_csv(out / "shifted_gap.csv")["measure"]) == set(pd.read_csv(out / "measures.csv").columns[1:])
    for command in (["analyze", "--zoo", str(out)], ["run"]):
        assert build_parser().parse_args([*command, "--gap", "gap_shift"]).gap == "gap_shift"


def test_readme_worked_example_adds_a_measure_that_gets_ranked(smoke_run, tmp_path):
    out, _ = smoke_run
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### 2. Add a complexity measure")[1].split("### 3.")[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    name = re.search(r'@register_measure\("([^"]+)"', code).group(1)
    (tmp_path / "readme_measure.py").write_text(code)
    env = {"SRRBENCH_MEASURES": "readme_measure", "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    commands = re.findall(r"^srrbench (measures|analyze) --zoo out/default(.*?)(?:#.*)?$", section, re.M)
    assert [c[0] for c in commands] == ["measures", "analyze"]
    before = pd.read_csv(out / "measures.csv")
    for command, rest in commands:
        result = srrbench(command, "--zoo", str(out), *rest.split(), "--quiet", env=env)
        assert result.returncode == 0, result.stderr
    after = pd.read_csv(out / "measures.csv")
    values = after[name]
    assert values.notna().all() and (values > 0).all()
    # the new measure is one more column: every other measure keeps its values (from the runs' caches)
    assert list(after.columns) == [*before.columns, name]
    pd.testing.assert_frame_equal(after[before.columns], before)
    table = (out / "tables" / "kendall_width16.md").read_text()
    assert name in table


def test_list_measures_and_profiles():
    result = srrbench("list-measures", "srr*")
    assert result.returncode == 0 and "srr-last" in result.stdout and "path-norm" not in result.stdout
    result = srrbench("profiles")
    assert result.returncode == 0
    for profile in ("smoke", "default", "cifar10", "cifar10-paper"):
        assert profile in result.stdout
