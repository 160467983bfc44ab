"""`srrbench run` killed with SIGKILL at random moments (training, checkpoint writes, measures, layer-wise SRR,
analysis), over and over, then run to the end: every rerun finishes, no finished run is redone or altered, and
the final tables equal those of a run that was never interrupted.

The CLI runs as a subprocess with one torch thread (OMP_NUM_THREADS=1): the thread count changes the last bits of
a run's floats, and the tables are compared exactly.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]

# 4 runs of tiny digits models stopping at train CE 0.75 (epochs 4 to 10, ~60 ms each, a resumable state saved after
# every one): ~3 s of training, then four cheap measures, layer-wise SRR of init/epoch-2/final and the analysis with
# its plots.
PROFILE = """
description = "interruption test: 4 tiny runs, cheap measures"
[data]
dataset = "digits"
n_train = 1000
n_test = 100
[model]
patch_size = 4
depth = 1
heads = 2
[train]
max_epochs = 12
warmup_epochs = 1
target_ce = 0.75
checkpoint_epochs = [2]
[grid]
variant = ["crate", "crate-c"]
lr = [0.003, 0.01]
batch_size = [32]
width = [16]
[measures]
names = ["l2", "srr", "path-norm", "inverse-margin"]
n_samples = 32
[analysis]
n_boot = 5
"""
STAGES = {"zoo": "[1/3] zoo", "measures": "[2/3] measures", "analysis": "[3/3] analysis"}
# which stage each kill aims at, in order: training first (while there is training left), then the rest
SCHEDULE = ("zoo",) * 4 + ("measures",) * 2 + ("analysis",) * 4


def srrbench(*args):
    exe = Path(sys.executable).with_name("srrbench")
    return ([str(exe)] if exe.exists() else [sys.executable, "-m", "benchmark"]) + list(args)


def environment():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def finished_runs(out: Path) -> dict[str, dict[str, bytes]]:
    """{run_id: {file: bytes}} of the runs whose metrics.json marks them finished."""
    found = {}
    for run_dir in sorted((out / "runs").glob("*")) if (out / "runs").exists() else []:
        try:
            metrics = json.loads((run_dir / "metrics.json").read_bytes())
        except (OSError, ValueError):
            continue
        if metrics.get("status") in ("done", "diverged"):
            found[run_dir.name] = {name: (run_dir / name).read_bytes()
                                   for name in ("metrics.json", "ckpt/final.pt", "ckpt/final.pt.sha256")
                                   if (run_dir / name).exists()}
    return found


def stage_reached(stdout: str) -> str:
    reached = [stage for stage, line in STAGES.items() if line in stdout]
    return reached[-1] if reached else "startup"


def tables(out: Path) -> dict[str, pd.DataFrame]:
    models = pd.read_csv(out / "models.csv").drop(columns=["seconds"])   # wall time is the one thing allowed to differ
    return {"models": models, "measures": pd.read_csv(out / "measures.csv"),
            "layerwise": pd.read_csv(out / "layerwise.csv"), "correlations": pd.read_csv(out / "correlations.csv")}


def run_timed(command, env) -> dict[str, float]:
    """Run ``command`` to the end; the seconds at which each stage's first line appeared, and "end"."""
    start = time.monotonic()
    marks = {}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    for line in proc.stdout:
        output.append(line)
        for stage, first_line in STAGES.items():
            if line.startswith(first_line):
                marks.setdefault(stage, time.monotonic() - start)
    assert proc.wait(timeout=120) == 0, "".join(output)
    marks["end"] = time.monotonic() - start
    return marks


def wait_for_line(path: Path, text: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until ``text`` appears in the process's output file, or the process ends."""
    deadline = time.monotonic() + timeout
    while text not in path.read_text() and proc.poll() is None:
        assert time.monotonic() < deadline, f"{text!r} never appeared"
        time.sleep(0.005)


def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_tables(tmp_path):
    profile = tmp_path / "interrupt.toml"
    profile.write_text(PROFILE)
    env = environment()
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    command = srrbench("run", "--profile", str(profile), "--workers", "1", "--quiet", "--out")

    marks = run_timed(command + [str(straight)], env)             # the uninterrupted run, its stages timed
    # kill windows: each stage's uninterrupted length
    window = {"zoo": marks["measures"] - marks["zoo"], "measures": marks["analysis"] - marks["measures"],
              "analysis": marks["end"] - marks["analysis"]}

    rng = random.Random(20261123)
    seen: dict[str, dict[str, bytes]] = {}
    kills, stages, attempts = 0, [], 0
    while kills < len(SCHEDULE):
        attempts += 1
        assert attempts <= 2 * len(SCHEDULE), f"only {kills} kills landed in {attempts} attempts"
        target = SCHEDULE[kills]
        log = tmp_path / f"attempt-{attempts}.log"
        with open(log, "w") as stdout:
            proc = subprocess.Popen(command + [str(killed)], env=env, stdout=stdout, stderr=subprocess.STDOUT)
            # a random moment of the target stage's window; reruns skip what is done, so a stage finished earlier
            # is quick and the kill falls in a later one
            wait_for_line(log, STAGES[target], proc)
            try:
                proc.wait(timeout=rng.uniform(0.0, 1.0) * window[target])
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
                stages.append(stage_reached(log.read_text()))
            else:  # it finished before the kill: a completed rerun must succeed
                assert proc.returncode == 0, log.read_text()
        now = finished_runs(killed)
        for run_id, files in seen.items():                      # a finished run is never redone or altered
            assert now.get(run_id) == files, f"finished run {run_id} changed in attempt {attempts}"
        seen.update(now)

    final = subprocess.run(command + [str(killed)], env=env, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stdout + final.stderr
    after = finished_runs(killed)
    assert len(after) == 4 and seen, "no run finished before the last kill"
    for run_id, files in seen.items():
        assert after[run_id] == files, f"finished run {run_id} changed in the final rerun"
    # the kills hit training and at least one later stage
    assert "zoo" in stages and set(stages) - {"zoo", "startup"}, stages
    for run_dir in (killed / "runs").iterdir():                 # each run completed its training once
        finishes = [line for line in (run_dir / "events.log").read_text().splitlines() if " finish " in line]
        assert len(finishes) <= 1, (run_dir.name, finishes)
        assert not (run_dir / "ckpt" / "state.pt").exists()
    got, want = tables(killed), tables(straight)
    assert len(want["correlations"]) > 0 and len(want["models"]) == 4
    for name in want:
        pd.testing.assert_frame_equal(got[name], want[name], check_exact=True, obj=name)
    leftovers = sorted(str(p.relative_to(killed)) for p in killed.rglob(".*.tmp"))   # temp files of killed writes
    events = [line.split(maxsplit=3)[3] for path in killed.glob("runs/*/events.log")
              for line in path.read_text().splitlines()]
    restarts = {kind: sum(e.startswith(kind) for e in events) for kind in ("start", "resume", "finish")}
    print(f"\ninterruption: stages at {marks}; {kills} kills in {attempts} attempts, in stages {stages}; "
          f"training events {restarts}; temp files left by killed writes: {leftovers}")
