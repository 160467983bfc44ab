"""Verify a zoo directory: every run's config hash, checkpoint checksums and metrics, without changing anything."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .store import RunStore, StoreError, load_checkpoint


@dataclass
class CheckReport:
    runs: int = 0
    finished: int = 0
    unfinished: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        state = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        return (f"{self.runs} runs: {self.finished} finished, {self.unfinished} unfinished (resumable); {state}")


def check_zoo(root: str | Path) -> CheckReport:
    store = RunStore(root)
    report = CheckReport()
    if not store.runs_dir.exists():
        report.problems.append(f"{store.runs_dir}: no runs directory (not a zoo, or nothing built yet)")
        return report
    for run_dir in sorted(p for p in store.runs_dir.iterdir() if p.is_dir()):
        run_id = run_dir.name
        report.runs += 1
        if not (run_dir / "config.json").exists():
            report.problems.append(f"{run_dir}: no config.json")
            continue
        try:
            store.check_config(run_id)
        except StoreError as err:
            report.problems.append(str(err))
            continue
        for ckpt in sorted((run_dir / "ckpt").glob("*.pt")):
            try:
                load_checkpoint(ckpt)
            except StoreError as err:
                report.problems.append(str(err))
        metrics_path = run_dir / "metrics.json"
        metrics = store.metrics(run_id)
        if metrics_path.exists() and metrics is None:
            report.problems.append(f"{metrics_path}: unreadable or not this run's metrics (will be redone)")
        if metrics is not None and metrics["status"] in ("done", "diverged"):
            report.finished += 1
            if metrics["status"] == "done" and not store.ckpt(run_id, "final").exists():
                report.problems.append(f"{run_dir}: status done but ckpt/final.pt is missing (will be redone)")
        else:
            report.unfinished += 1
    return report
