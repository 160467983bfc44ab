"""Verify a zoo directory: every run's config hash, checkpoint checksums and metrics, without changing anything."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .store import SET_ASIDE, RunStore, StoreError, load_checkpoint, read_json


@dataclass
class CheckReport:
    runs: int = 0
    finished: int = 0
    unfinished: int = 0
    set_aside: int = 0              # runs/<id>.corrupt-<time>: found corrupt by a build, kept only for inspection
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        state = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        aside = f", {self.set_aside} corrupt run directories set aside (never used)" if self.set_aside else ""
        return (f"{self.runs} runs: {self.finished} finished, {self.unfinished} unfinished (resumable, or to redo "
                f"when corrupt){aside}; {state}")


def check_zoo(root: str | Path) -> CheckReport:
    store = RunStore(root)
    report = CheckReport()
    if not store.runs_dir.exists():
        report.problems.append(f"{store.runs_dir}: no runs directory (not a zoo, or nothing built yet)")
        return report
    for run_dir in sorted(p for p in store.runs_dir.iterdir() if p.is_dir()):
        run_id = run_dir.name
        if SET_ASIDE in run_id:
            report.set_aside += 1
            continue
        report.runs += 1
        if not (run_dir / "config.json").exists():
            report.problems.append(f"{run_dir}: no config.json")
            report.unfinished += 1
            continue
        try:
            store.check_config(run_id)
        except StoreError as err:
            report.problems.append(f"{err} (a build sets it aside and redoes the run)")
            report.unfinished += 1
            continue
        for ckpt in sorted((run_dir / "ckpt").glob("*.pt")):
            try:
                load_checkpoint(ckpt)
            except StoreError as err:
                report.problems.append(str(err))
        for cache in ("measures.json", "layerwise.json"):
            if (run_dir / cache).exists():
                try:
                    read_json(run_dir / cache)
                except StoreError as err:
                    report.problems.append(f"{err} (will be recomputed)")
        metrics_path = run_dir / "metrics.json"
        metrics = store.metrics(run_id)
        if metrics_path.exists() and metrics is None:
            report.problems.append(f"{metrics_path}: unreadable or not this run's metrics (will be redone)")
        if metrics is not None and metrics["status"] == "done" and not store.ckpt(run_id, "final").exists():
            report.problems.append(f"{run_dir}: status done but ckpt/final.pt is missing (will be redone)")
        if store.is_finished(run_id):  # finished and intact: a build skips it
            report.finished += 1
        else:
            report.unfinished += 1
    return report
