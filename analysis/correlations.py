"""How well each complexity measure predicts the generalization gap, one table per width, and the zoo's analysis.

``correlation_table`` turns a zoo's ``models.csv`` and ``measures.csv`` into one long table: for every width and
measure, Kendall's τ over all models, ψ_i per varied hyperparameter axis, Ψ = mean_i ψ_i and the conditional
mutual information score, each with a percentile-bootstrap interval over models (statistics from
``analysis.stats``). ``analyze_zoo`` reads a zoo directory, writes that table, the per-width Kendall tables, the
plots and the report next to it, and returns their paths.

Sign convention: positive = a larger measure goes with a larger gap. Values are raw, never flipped by the
measure's direction; the tables show the registry's ``higher_is_complex`` so a reader sees which sign to expect.
This package reads files only; it never imports ``zoo``, ``measures`` or ``benchmark``.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .stats import bootstrap_ci, conditional_mi, granulated_kendall, kendall_tau

__all__ = [
    "DEFAULT_AXES",
    "CORRELATION_COLUMNS",
    "select_models",
    "correlation_table",
    "ZooData",
    "read_zoo",
    "analyze_zoo",
]

DEFAULT_AXES = ("variant", "lr", "batch_size", "dropout")
CORRELATION_COLUMNS = ["width", "measure", "statistic", "axis", "value", "ci_low", "ci_high", "n_models", "n_groups"]
# columns of the per-measure frames handed to analysis.stats; chosen so they cannot clash with a hyperparameter
_MU, _GAP = "measure_value", "gap_value"
_FIXED = ("seed",)
_TRUE_STRINGS = {"true", "1", "yes", "y", "t"}


# ---------------------------------------------------------------------------------------------------------------
# Which models enter the analysis
# ---------------------------------------------------------------------------------------------------------------

def _as_bool(values: pd.Series) -> pd.Series:
    """reached_target as read from CSV: bool, 0/1, 'True'/'False' or empty (pending runs) -> bool, empty = False."""
    if values.dtype == bool:
        return values
    return values.map(lambda v: str(v).strip().lower() in _TRUE_STRINGS if pd.notna(v) else False).astype(bool)


def select_models(models: pd.DataFrame, include_unreached: bool = False) -> tuple[pd.DataFrame, dict]:
    """The models an analysis uses, and how many were left out and why.

    Jiang et al.'s protocol compares models trained to the same training cross-entropy, so by default only runs
    with ``status == "done"`` that reached the CE target are kept.

    Parameters
    ----------
    models : pandas.DataFrame
        One row per run with at least ``status`` and ``reached_target`` columns (as in a zoo's ``models.csv``).
    include_unreached : bool, default False
        Keep finished runs that stopped at ``max_epochs`` above the target too.

    Returns
    -------
    (pandas.DataFrame, dict)
        The kept rows (original index), and counts: ``total``; ``by_status`` (runs per status); ``reached_target``
        (finished runs that reached the target); ``excluded`` (``not_reached`` and one entry per status other than
        done, e.g. ``diverged``, ``failed``, ``pending``); ``used``; ``include_unreached``.

    Examples
    --------
    >>> models = pd.DataFrame({"status": ["done", "done", "diverged", "failed"],
    ...                        "reached_target": [True, False, False, False]})
    >>> kept, counts = select_models(models)
    >>> len(kept), counts["excluded"]
    (1, {'not_reached': 1, 'diverged': 1, 'failed': 1})
    """
    for column in ("status", "reached_target"):
        if column not in models.columns:
            raise KeyError(f"column {column!r} not in the models table; available: {list(models.columns)}")
    status = models["status"].fillna("pending").astype(str)
    reached = _as_bool(models["reached_target"])
    done = status == "done"
    keep = done if include_unreached else done & reached
    excluded = {"not_reached": 0 if include_unreached else int((done & ~reached).sum())}
    excluded.update({s: int(n) for s, n in status[~done].value_counts().sort_index().items()})
    counts = {
        "total": int(len(models)),
        "by_status": {s: int(n) for s, n in status.value_counts().sort_index().items()},
        "reached_target": int((done & reached).sum()),
        "excluded": excluded,
        "used": int(keep.sum()),
        "include_unreached": bool(include_unreached),
    }
    return models.loc[keep], counts


# ---------------------------------------------------------------------------------------------------------------
# The long correlation table
# ---------------------------------------------------------------------------------------------------------------

def _bootstrap_many(df: pd.DataFrame, statistics_fn: Callable[[pd.DataFrame], dict[str, float]], n_boot: int,
                    level: float, seed: int, min_finite_fraction: float = 0.5) -> dict[str, tuple[float, float]]:
    """``stats.bootstrap_ci`` for several statistics that one computation yields (every ψ_i and Ψ of one
    ``granulated_kendall`` call): the same resamples for the same seed and the same interval rule, one call per
    replicate instead of one per statistic. A test pins it to ``bootstrap_ci``."""
    n = len(df)
    names = list(statistics_fn(df))
    if n == 0:
        return {name: (math.nan, math.nan) for name in names}
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, n, size=(n_boot, n))
    replicates = [statistics_fn(df.iloc[r].reset_index(drop=True)) for r in rows]
    intervals = {}
    for name in names:
        values = np.array([rep[name] for rep in replicates], dtype=float)
        finite = values[np.isfinite(values)]
        if finite.size < max(2, min_finite_fraction * n_boot):
            intervals[name] = (math.nan, math.nan)
        else:
            low, high = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
            intervals[name] = (float(low), float(high))
    return intervals


def _granulated_values(df: pd.DataFrame, axes: tuple[str, ...]) -> dict[str, float]:
    result = granulated_kendall(df, _MU, _GAP, axes, fixed=_FIXED)
    return {**{f"psi:{axis}": r.psi for axis, r in result.per_axis.items()}, "Psi": result.Psi}


def _measure_rows(frame: pd.DataFrame, width, measure: str, axes: tuple[str, ...], n_boot: int, n_boot_cmi: int,
                  level: float, seed: int) -> list[dict]:
    """The τ, ψ_i, Ψ and CMI rows of one measure in one width; ``frame`` holds only models with both values."""
    n_models = len(frame)
    row = {"width": width, "measure": measure, "n_models": n_models}
    rows = []

    tau = kendall_tau(frame[_MU], frame[_GAP])
    tau_ci = bootstrap_ci(frame, lambda d: kendall_tau(d[_MU], d[_GAP]), n_boot=n_boot, level=level, seed=seed)
    rows.append({**row, "statistic": "tau", "axis": "all", "value": tau, "ci_low": tau_ci[0], "ci_high": tau_ci[1],
                 "n_groups": 1})

    granulated = granulated_kendall(frame, _MU, _GAP, axes, fixed=_FIXED)
    cis = _bootstrap_many(frame, lambda d: _granulated_values(d, axes), n_boot, level, seed) if axes else {}
    for axis, r in granulated.per_axis.items():
        low, high = cis[f"psi:{axis}"]
        rows.append({**row, "statistic": "psi", "axis": axis, "value": r.psi, "ci_low": low, "ci_high": high,
                     "n_groups": r.n_groups})
    low, high = cis.get("Psi", (math.nan, math.nan))
    used_groups = sum(r.n_groups for r in granulated.per_axis.values() if np.isfinite(r.psi))
    rows.append({**row, "statistic": "Psi", "axis": "all", "value": granulated.Psi, "ci_low": low, "ci_high": high,
                 "n_groups": used_groups})

    cmi = conditional_mi(frame, _MU, _GAP, axes)
    if n_boot_cmi > 0:
        cmi_ci = bootstrap_ci(frame, lambda d: conditional_mi(d, _MU, _GAP, axes), n_boot=n_boot_cmi, level=level,
                              seed=seed)
    else:
        cmi_ci = (math.nan, math.nan)
    n_sets = sum(math.comb(len(axes), k) for k in range(min(2, len(axes)) + 1))
    rows.append({**row, "statistic": "cmi", "axis": "all", "value": cmi, "ci_low": cmi_ci[0], "ci_high": cmi_ci[1],
                 "n_groups": n_sets})
    return rows


def _varied_axes(table: pd.DataFrame, axes: Sequence[str]) -> tuple[str, ...]:
    return tuple(a for a in axes if table[a].nunique(dropna=False) > 1)


def correlation_table(models: pd.DataFrame, measures: pd.DataFrame, gap: str = "gap_loss",
                      axes: Sequence[str] = DEFAULT_AXES, include_unreached: bool = False, n_boot: int = 200,
                      seed: int = 0, n_boot_cmi: int | None = None, level: float = 0.95,
                      n_jobs: int | None = 1) -> pd.DataFrame:
    """Kendall τ, granulated ψ_i and Ψ, and CMI of every measure against the gap, separately for each width.

    Parameters
    ----------
    models : pandas.DataFrame
        A zoo's ``models.csv``: ``run_id``, ``status``, ``reached_target``, ``width``, the ``gap`` column, the
        ``axes`` columns and, if present, ``seed`` (held fixed inside every ψ group, never an axis).
    measures : pandas.DataFrame
        ``run_id`` and one column per measure (NaN where it failed; such models are left out of that measure only).
    gap : str, default "gap_loss"
        Generalization gap column of ``models`` (``gap_loss`` = test CE − train CE, or ``gap_acc``).
    axes : sequence of str, default ("variant", "lr", "batch_size", "dropout")
        Candidate hyperparameter axes. Within a width only those that take ≥ 2 values among the kept models are
        granulated (and conditioned on by CMI); the others get no ψ row.
    include_unreached : bool, default False
        Keep finished runs that did not reach the CE target (Jiang et al.'s protocol leaves them out).
    n_boot : int, default 200
        Bootstrap resamples of the models (within the width) for the τ, ψ and Ψ intervals.
    seed : int, default 0
        Seed of the resampling; every statistic and measure sees the same resamples (paired intervals).
    n_boot_cmi : int or None, default None
        Resamples for the CMI interval, which costs several times more per resample (every pair of models for up
        to 11 conditioning sets); None = ``min(n_boot, 100)``; 0 = no CMI interval (NaN).
    level : float, default 0.95
        Coverage of the percentile intervals.
    n_jobs : int or None, default 1
        Parallel processes over (width, measure) tasks, via joblib; -1 = all cores.

    Returns
    -------
    pandas.DataFrame
        Long form with columns ``width, measure, statistic, axis, value, ci_low, ci_high, n_models, n_groups``;
        per width and measure the rows ``tau`` (axis "all"), ``psi`` (one per varied axis), ``Psi`` ("all") and
        ``cmi`` ("all"). ``n_models``: models with both a measure value and a gap. ``n_groups``: what the value
        averages or minimises over: 1 for τ; ψ_i's groups of models differing only in axis i (same seed); for Ψ
        the sum over the axes that enter it; for CMI the number of conditioning sets S (|S| ≤ 2).
        ``df.attrs["counts"]`` holds ``select_models``' counts plus ``used_by_width``; ``df.attrs["settings"]``
        the arguments and the varied axes per width.

    Examples
    --------
    >>> models = pd.DataFrame({"run_id": list("abcd"), "status": "done", "reached_target": True, "width": 8,
    ...                        "lr": [1, 2, 1, 2], "batch_size": [32, 32, 64, 64], "seed": 0,
    ...                        "gap_loss": [0.1, 0.2, 0.3, 0.5]})
    >>> measures = pd.DataFrame({"run_id": list("abcd"), "mu": [1.0, 2.0, 4.0, 3.0]})
    >>> table = correlation_table(models, measures, axes=["lr", "batch_size"], n_boot=20)
    >>> table[["statistic", "axis", "value"]]
      statistic        axis     value
    0       tau         all  0.666667
    1       psi          lr  0.000000
    2       psi  batch_size  1.000000
    3       Psi         all  0.500000
    4       cmi         all  0.000000
    """
    axes = tuple(axes)
    required = ["run_id", "status", "reached_target", "width", gap, *axes]
    missing = [c for c in required if c not in models.columns]
    if missing:
        raise KeyError(f"column(s) {missing} not in the models table; available: {list(models.columns)}")
    if "run_id" not in measures.columns:
        raise KeyError(f"the measures table needs a run_id column; it has {list(measures.columns)}")
    duplicated = measures["run_id"][measures["run_id"].duplicated()].unique()
    if len(duplicated):
        raise ValueError(f"run_id(s) {list(duplicated[:5])} appear more than once in the measures table")
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    n_boot_cmi = min(n_boot, 100) if n_boot_cmi is None else int(n_boot_cmi)

    kept, counts = select_models(models, include_unreached)
    measure_names = [c for c in measures.columns if c != "run_id"]
    values = measures.set_index("run_id")[measure_names].apply(pd.to_numeric, errors="coerce")
    values = values.reindex(kept["run_id"].to_numpy())
    fixed = [c for c in _FIXED if c in kept.columns and c not in axes]
    base = kept[[*axes, *fixed]].reset_index(drop=True)
    base[_GAP] = pd.to_numeric(kept[gap], errors="coerce").to_numpy()
    widths = kept["width"].reset_index(drop=True)

    tasks, varied_by_width, used_by_width = [], {}, {}
    for width in sorted(widths.dropna().unique().tolist()):
        in_width = (widths == width).to_numpy()
        varied = _varied_axes(base.loc[in_width], axes)
        varied_by_width[_plain(width)] = list(varied)
        used_by_width[_plain(width)] = int(in_width.sum())
        for measure in measure_names:
            frame = base.loc[in_width].assign(**{_MU: values[measure].to_numpy()[in_width]})
            frame = frame.loc[frame[_MU].notna() & frame[_GAP].notna()].reset_index(drop=True)
            tasks.append((frame, _plain(width), measure, varied))

    arguments = (n_boot, n_boot_cmi, level, seed)
    if n_jobs in (None, 1) or len(tasks) < 2:
        results = [_measure_rows(*task, *arguments) for task in tasks]
    else:
        from joblib import Parallel, delayed
        results = Parallel(n_jobs=n_jobs)(delayed(_measure_rows)(*task, *arguments) for task in tasks)
    table = pd.DataFrame([row for rows in results for row in rows], columns=CORRELATION_COLUMNS)
    table = table.astype({"n_models": int, "n_groups": int})
    table.attrs["counts"] = {**counts, "used_by_width": used_by_width}
    table.attrs["settings"] = {"gap": gap, "axes": list(axes), "varied_axes": varied_by_width,
                               "include_unreached": bool(include_unreached), "n_boot": int(n_boot),
                               "n_boot_cmi": n_boot_cmi, "level": level, "seed": int(seed), "fixed": fixed}
    return table


def _plain(value):
    """numpy scalars -> Python scalars (JSON, dict keys), 384.0 -> 384."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# ---------------------------------------------------------------------------------------------------------------
# Reading a zoo directory and writing its analysis
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class ZooData:
    """A zoo directory's inputs to the analysis; optional ones are None (or empty) when absent."""
    directory: Path
    models: pd.DataFrame
    measures: pd.DataFrame
    info: pd.DataFrame | None = None           # measures_info.csv
    options: dict | None = None                # measures_options.json
    profile_text: str | None = None            # profile.toml, verbatim
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
    return data


def analyze_zoo(zoo_dir: str | Path, gap: str = "gap_loss", include_unreached: bool = False, n_boot: int = 200,
                seed: int = 0, log: Callable[[str], object] | None = print, n_boot_cmi: int | None = None,
                n_jobs: int | None = -1) -> dict:
    """Analyse a zoo directory: correlations, Kendall tables, plots and report, written beside the inputs.

    Writes ``correlations.csv`` (``correlation_table``'s long table), ``analysis_summary.json`` (model counts,
    settings, timings), ``tables/kendall_width<W>.{csv,md,tex}``, ``plots/*.{png,pdf}`` and ``report.{md,html}``.
    Every file is written to a temporary name and renamed, so a rerun replaces it whole; plots and tables of an
    earlier run that this run no longer makes (a measure or width gone) are removed.

    Parameters
    ----------
    zoo_dir : str or Path
        The zoo directory (see ``read_zoo`` for what it must hold).
    gap, include_unreached, n_boot, seed, n_boot_cmi
        As in ``correlation_table``.
    log : callable or None, default print
        Receives one line per stage.
    n_jobs : int or None, default -1
        Processes for the bootstrap (joblib; -1 = all cores).

    Returns
    -------
    dict
        ``correlations``, ``summary``, ``report_md``, ``report_html``: Path; ``tables``, ``plots``: lists of Path;
        ``skipped``: plot name -> the reason it was not made.
    """
    from . import plots, report, tables

    say = log or (lambda line: None)
    started = time.perf_counter()
    data = read_zoo(zoo_dir)
    directory = data.directory
    for note in data.notes:
        say(note)

    t0 = time.perf_counter()
    correlations = correlation_table(data.models, data.measures, gap=gap, include_unreached=include_unreached,
                                     n_boot=n_boot, seed=seed, n_boot_cmi=n_boot_cmi, n_jobs=n_jobs)
    counts = correlations.attrs["counts"]
    t_corr = time.perf_counter() - t0
    say(f"correlations: {correlations['measure'].nunique()} measures x {len(counts['used_by_width'])} width(s) "
        f"on {counts['used']} of {counts['total']} models in {t_corr:.1f} s")
    correlations_path = directory / "correlations.csv"
    tables.write_text_atomic(correlations_path, correlations.to_csv(index=False))

    t0 = time.perf_counter()
    table_paths, kendall = tables.write_kendall_tables(correlations, data.info, directory / "tables")
    say(f"tables: {len(table_paths)} files -> {directory / 'tables'}")

    plot_result = plots.write_plots(data, correlations, directory / "plots", gap=gap)
    t_plots = time.perf_counter() - t0
    say(f"plots: {len(plot_result.paths)} files -> {directory / 'plots'} in {t_plots:.1f} s"
        + "".join(f"; {name} skipped" for name in plot_result.skipped))

    summary = {"counts": counts, "settings": correlations.attrs["settings"],
               "seconds": {"correlations": round(t_corr, 2), "tables_and_plots": round(t_plots, 2)}}
    summary_path = directory / "analysis_summary.json"
    tables.write_text_atomic(summary_path, json.dumps(summary, indent=2, default=str) + "\n")

    md_path, html_path = report.write_report(data, correlations, kendall, plot_result, gap=gap)
    say(f"report: {md_path} and {html_path.name} ({time.perf_counter() - started:.1f} s in all)")
    return {"correlations": correlations_path, "summary": summary_path, "tables": table_paths,
            "plots": plot_result.paths, "skipped": dict(plot_result.skipped), "report_md": md_path,
            "report_html": html_path}
