"""Reading a zoo directory and writing its whole analysis beside it: the top of the analysis package.

``read_zoo`` loads a zoo's inputs; ``analyze_zoo`` runs correlations -> reliability -> paired comparisons ->
the i.i.d. and shifted gaps side by side -> tables -> plots -> report and writes every file (each atomically,
through ``zoo.store``).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from zoo.store import atomic_write_text

from .comparisons import paired_comparisons
from .correlations import analysis_input, measure_correlations
from .plots import write_plots
from .reliability import reliability_table
from .report import write_report
from .shifted_gap import GAP_PAIR, IID_GAP, SHIFTED_GAP, GapComparison, compare_gaps
from .tables import write_kendall_tables

__all__ = ["ZooData", "read_zoo", "gap_pair", "analyze_zoo"]


@dataclass
class ZooData:
    """A zoo directory's inputs to the analysis; optional ones are None (or empty) when absent."""
    directory: Path
    models: pd.DataFrame
    measures: pd.DataFrame
    info: pd.DataFrame | None = None           # measures_info.csv
    options: dict | None = None                # measures_options.json
    profile_text: str | None = None            # profile.toml, verbatim
    target_ce: float | None = None             # the runs' training-CE target (runs/*/config.json), if one for all
    shift: str | None = None                   # the shifted test set the runs record (runs/*/metrics.json), if one
    layerwise: pd.DataFrame | None = None      # layerwise.csv
    logs: pd.DataFrame | None = None           # runs/*/log.csv stacked, with a run_id column
    notes: list[str] = field(default_factory=list)  # what was missing or unreadable, one line each


def _read_logs(directory: Path) -> pd.DataFrame | None:
    runs_dir = directory / "runs"
    if not runs_dir.is_dir():
        return None
    frames = []
    for path in sorted(runs_dir.glob("*/log.csv")):
        try:
            log = pd.read_csv(path)
        except (pd.errors.EmptyDataError, pd.errors.ParserError):
            continue
        if len(log):
            frames.append(log.assign(run_id=path.parent.name))
    return pd.concat(frames, ignore_index=True) if frames else None


def _read_target_ce(directory: Path) -> float | None:
    """The ``train.target_ce`` that every run's config.json records, or None (no runs, or several targets)."""
    targets = set()
    for path in (directory / "runs").glob("*/config.json"):
        try:
            targets.add(float(json.loads(path.read_text())["train"]["target_ce"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue   # a foreign or corrupt config is the run store's business (srrbench check)
    return targets.pop() if len(targets) == 1 else None


def _read_shift(directory: Path) -> tuple[str | None, list[str]]:
    """The shift identity (``zoo.shift``) that every finished run's metrics.json records, and a note when the runs
    record several or some none (a zoo not rebuilt since; ``srrbench zoo`` records the missing ones)."""
    shifts: dict[str, int] = {}
    for path in (directory / "runs").glob("*/metrics.json"):
        try:
            metrics = json.loads(path.read_text())
        except (OSError, ValueError):
            continue   # the run store's business (srrbench check)
        if isinstance(metrics, dict) and metrics.get("status") in ("done", "diverged"):
            shift = metrics.get("shift") or "none"
            shifts[shift] = shifts.get(shift, 0) + 1
    if len(shifts) <= 1 and "none" not in shifts:
        return next(iter(shifts), None), []
    counts = ", ".join(f"{n} {'without one' if s == 'none' else f'with {s!r}'}" for s, n in sorted(shifts.items()))
    return None, [f"The finished runs record different shifted test sets ({counts}): rerun `srrbench zoo` with the "
                  f"same profile and --out to record the current one for all (no training)."]


def read_zoo(zoo_dir: str | Path) -> ZooData:
    """Read the analysis inputs of a zoo directory.

    ``models.csv`` and ``measures.csv`` are required (FileNotFoundError naming the stage that makes them);
    ``measures_info.csv``, ``measures_options.json``, ``profile.toml``, ``layerwise.csv`` and ``runs/*/log.csv``
    are optional, and each one absent adds a line to ``notes``.
    """
    directory = Path(zoo_dir)
    required = {"models.csv": "build the zoo first", "measures.csv": "compute the measures first"}
    for name, hint in required.items():
        if not (directory / name).exists():
            raise FileNotFoundError(f"{directory / name} not found: {hint}")
    data = ZooData(directory, pd.read_csv(directory / "models.csv"), pd.read_csv(directory / "measures.csv"))
    if (directory / "measures_info.csv").exists():
        data.info = pd.read_csv(directory / "measures_info.csv")
    else:
        data.notes.append("measures_info.csv not found: families and expected directions are unknown.")
    if (directory / "measures_options.json").exists():
        data.options = json.loads((directory / "measures_options.json").read_text())
    else:
        data.notes.append("measures_options.json not found: the measures' options are not shown.")
    if (directory / "profile.toml").exists():
        data.profile_text = (directory / "profile.toml").read_text()
    else:
        data.notes.append("profile.toml not found: the profile is not shown.")
    if (directory / "layerwise.csv").exists():
        data.layerwise = pd.read_csv(directory / "layerwise.csv")
    data.logs = _read_logs(directory)
    data.target_ce = _read_target_ce(directory)
    data.shift, shift_notes = _read_shift(directory)
    data.notes += shift_notes
    return data


def gap_pair(data: ZooData, correlations: pd.DataFrame, gap: str, **options) -> GapComparison | None:
    """The i.i.d. and the shifted gap side by side (``shifted_gap.compare_gaps``); None when models.csv has no
    ``gap_shift`` column (a zoo built before the shifted test set). A gap of the pair other than ``gap`` gets its
    own ``measure_correlations`` with the same models, resamples and options but no CMI interval (only Ψ is used;
    CMI's interval is the costly one)."""
    if SHIFTED_GAP not in data.models.columns:
        return None
    tables = {gap: correlations}
    for other in GAP_PAIR:
        if other not in tables:
            tables[other] = measure_correlations(data.models, data.measures, gap=other, **{**options,
                                                                                          "n_boot_cmi": 0}).table
    return compare_gaps(tables[IID_GAP], tables[SHIFTED_GAP])


def analyze_zoo(zoo_dir: str | Path, gap: str = "gap_loss", include_unreached: bool = False, n_boot: int = 200,
                seed: int = 0, log: Callable[[str], object] | None = print, axes: Sequence[str] | None = None,
                n_boot_cmi: int | None = None, n_jobs: int | None = 1) -> dict:
    """Analyse a zoo directory: correlations, reliability, paired comparisons, Kendall tables, plots and report.

    Writes ``correlations.csv`` (``correlation_table``'s long table, sign-errors included),
    ``comparisons.csv`` (``paired_comparisons``), ``shifted_gap.csv`` (``gap_pair``: Ψ on the i.i.d. and the
    shifted gap per measure; only when models.csv has ``gap_shift``), ``reliability.csv``
    (``reliability_table``; only when some width has ≥ 2 seeds, else an old one is removed),
    ``analysis_summary.json`` (model counts, settings, timings), ``tables/kendall_width<W>.{csv,md,tex}``,
    ``plots/*.{png,pdf}`` and ``report.{md,html}``, the report opening with the reliability figures. Every file
    is written atomically, so a rerun replaces it whole; plots and tables of an earlier run that this run no
    longer makes are removed.

    Parameters
    ----------
    zoo_dir : str or Path
        The zoo directory (see ``read_zoo`` for what it must hold).
    gap, include_unreached, n_boot, seed, axes, n_boot_cmi
        As in ``correlations.measure_correlations``.
    log : callable or None, default print
        Receives one line per stage.
    n_jobs : int or None, default 1
        Processes for the statistics (joblib; -1 = all cores); one is enough for a few hundred models.

    Returns
    -------
    dict
        ``correlations``, ``comparisons``, ``summary``, ``report_md``, ``report_html``: Path; ``reliability``,
        ``shifted_gap``: Path or None; ``tables``, ``plots``: lists of Path; ``skipped``: plot name -> the reason
        it was not made.
    """
    say = log or (lambda line: None)
    started = time.perf_counter()
    data = read_zoo(zoo_dir)
    directory = data.directory
    for note in data.notes:
        say(note)

    t0 = time.perf_counter()
    result = measure_correlations(data.models, data.measures, gap=gap, axes=axes,
                                  include_unreached=include_unreached, n_boot=n_boot, seed=seed,
                                  n_boot_cmi=n_boot_cmi, n_jobs=n_jobs)
    correlations = result.table
    counts = correlations.attrs["counts"]
    t_corr = time.perf_counter() - t0
    say(f"correlations: {correlations['measure'].nunique()} measures x {len(counts['used_by_width'])} width(s) "
        f"on {counts['used']} of {counts['total']} models in {t_corr:.1f} s")
    correlations_path = directory / "correlations.csv"
    atomic_write_text(correlations_path, correlations.to_csv(index=False))

    t0 = time.perf_counter()
    reliability = reliability_table(analysis_input(data.models, data.measures, gap, axes, include_unreached))
    reliability_path = directory / "reliability.csv"
    if reliability.empty:
        reliability_path.unlink(missing_ok=True)
        reliability_path = None
        say("reliability: one seed per configuration, not measurable")
    else:
        atomic_write_text(reliability_path, reliability.to_csv(index=False))
        say("reliability: " + "; ".join(f"width {r['width']}: seed share {r['seed_share']:.2f}, gap tau "
                                        f"{r['gap_tau']:.2f}, ranking agreement Psi {r['ranking_tau_Psi']:.2f}"
                                        for r in reliability.to_dict("records")))
    comparisons = paired_comparisons(result)
    comparisons_path = directory / "comparisons.csv"
    atomic_write_text(comparisons_path, comparisons.to_csv(index=False))
    t_rel = time.perf_counter() - t0
    say(f"comparisons: {int(comparisons['resolved'].sum())} of {len(comparisons)} pairs resolved (Holm) "
        f"in {t_rel:.1f} s with reliability")

    t0 = time.perf_counter()
    gaps = gap_pair(data, correlations, gap, axes=axes, include_unreached=include_unreached, n_boot=n_boot,
                    seed=seed, n_jobs=n_jobs)
    shifted_path = directory / "shifted_gap.csv"
    if gaps is None:
        shifted_path.unlink(missing_ok=True)
        shifted_path = None
        say("shifted gap: models.csv has no gap_shift column (a zoo built before the shifted test set; "
            "`srrbench zoo` records it from the final checkpoints)")
    else:
        atomic_write_text(shifted_path, gaps.table.to_csv(index=False))
    t_shift = time.perf_counter() - t0
    if gaps is not None:
        say(f"shifted gap: Psi on {IID_GAP} and {SHIFTED_GAP}, ranking agreement " + "; ".join(
            f"width {w}: tau {t:.2f}" for w, t in gaps.agreement.items()) + f" in {t_shift:.1f} s")

    t0 = time.perf_counter()
    table_paths, kendall = write_kendall_tables(correlations, data.info, directory / "tables", gap=gap)
    say(f"tables: {len(table_paths)} files -> {directory / 'tables'}")

    plot_result = write_plots(data, correlations, directory / "plots", gap=gap, tables=kendall,
                              comparisons=comparisons)
    t_plots = time.perf_counter() - t0
    say(f"plots: {len(plot_result.paths)} files -> {directory / 'plots'} in {t_plots:.1f} s"
        + "".join(f"; {name} skipped" for name in plot_result.skipped))

    summary = {"counts": counts, "settings": correlations.attrs["settings"],
               "seconds": {"correlations": round(t_corr, 2), "reliability_and_comparisons": round(t_rel, 2),
                           "shifted_gap": round(t_shift, 2), "tables_and_plots": round(t_plots, 2)}}
    if gaps is not None:
        summary["shifted_gap"] = {"shift": data.shift, "ranking_tau_Psi": gaps.agreement,
                                  "n_measures": gaps.n_measures}
    summary_path = directory / "analysis_summary.json"
    atomic_write_text(summary_path, json.dumps(summary, indent=2, default=str) + "\n")

    md_path, html_path = write_report(data, correlations, kendall, plot_result, gap=gap, reliability=reliability,
                                      comparisons=comparisons, gaps=gaps)
    say(f"report: {md_path} and {html_path.name} ({time.perf_counter() - started:.1f} s in all)")
    return {"correlations": correlations_path, "comparisons": comparisons_path, "reliability": reliability_path,
            "shifted_gap": shifted_path, "summary": summary_path, "tables": table_paths, "plots": plot_result.paths,
            "skipped": dict(plot_result.skipped), "report_md": md_path, "report_html": html_path}
