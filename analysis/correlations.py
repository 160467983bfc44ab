"""How well each complexity measure predicts the generalization gap: the long per-width correlation table.

``measure_correlations`` turns a zoo's ``models.csv`` and ``measures.csv`` into one long table: for every width
and measure, Kendall's τ over all models, ψ_i per varied hyperparameter axis, Ψ = mean_i ψ_i, the conditional
mutual information score (statistics from ``analysis.stats``), each with a percentile-bootstrap interval
(``analysis.bootstrap``: configurations, then seeds within them), and the robust sign-error
(``analysis.sign_error``). It also keeps the τ and Ψ bootstrap replicates of every measure, drawn on the same
resamples for every measure of a width, for the paired comparisons (``analysis.comparisons``).

Sign convention: positive = a larger measure goes with a larger gap. Values are raw, never flipped by the
measure's direction; the tables show the registry's ``higher_is_complex`` so a reader sees which sign to expect.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from threadpoolctl import threadpool_limits

from .bootstrap import (Psi_replicates, cmi_replicates, draw_multiplicities, is_hierarchical, pair_signs,
                        percentile_interval, psi_replicates, tau_replicates)
from .selection import SEED, configuration_codes, present_axes, select_models
from .sign_error import SIGN_ERROR_STATISTICS, environment_sign_errors, summarize_sign_errors
from .stats import conditional_mi, granulated_kendall, joint_codes, kendall_tau, level_codes

__all__ = [
    "CORRELATION_COLUMNS",
    "MU",
    "GAP",
    "CONFIG",
    "AnalysisInput",
    "analysis_input",
    "Correlations",
    "measure_correlations",
    "correlation_table",
    "plain",
]

CORRELATION_COLUMNS = ["width", "measure", "statistic", "axis", "value", "ci_low", "ci_high", "n_models", "n_groups"]
# columns of the per-measure frames handed to analysis.stats; chosen so they cannot clash with a hyperparameter
MU, GAP = "measure_value", "gap_value"
CONFIG = "configuration"  # the configuration code column of AnalysisInput.base
HIERARCHICAL = "hierarchical: configurations with replacement, then seeds with replacement within each"
PLAIN = "models with replacement (one seed per configuration)"


def plain(value):
    """numpy scalars -> Python scalars (JSON, dict keys), 384.0 -> 384."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# ---------------------------------------------------------------------------------------------------------------
# The models and measures an analysis works on
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AnalysisInput:
    """The kept models of a zoo, ready for the statistics."""
    base: pd.DataFrame       # one row per kept model: the axes, seed (if any), GAP, width, configuration code
    values: pd.DataFrame     # the measures, one column each, rows aligned with ``base``
    axes: tuple[str, ...]    # candidate axes (present in the models table)
    counts: dict             # select_models' counts
    gap: str

    def width_input(self, width) -> tuple[pd.DataFrame, pd.DataFrame, tuple[str, ...]]:
        """The rows of one width (fresh index) and the axes that vary there."""
        in_width = (self.base["width"] == width).to_numpy()
        base = self.base.loc[in_width].reset_index(drop=True)
        varied = tuple(a for a in self.axes if base[a].nunique(dropna=False) > 1)
        return base, self.values.loc[in_width].reset_index(drop=True), varied

    @property
    def widths(self) -> list:
        return sorted(self.base["width"].dropna().unique().tolist())


def analysis_input(models: pd.DataFrame, measures: pd.DataFrame, gap: str = "gap_loss",
                   axes: Sequence[str] | None = None, include_unreached: bool = False) -> AnalysisInput:
    """Check the tables, keep the models ``select_models`` keeps, and align the measures with them."""
    axes = present_axes(models, axes)
    required = ["run_id", "status", "reached_target", "width", gap]
    missing = [c for c in required if c not in models.columns]
    if missing:
        raise KeyError(f"column(s) {missing} not in the models table; available: {list(models.columns)}")
    if "run_id" not in measures.columns:
        raise KeyError(f"the measures table needs a run_id column; it has {list(measures.columns)}")
    duplicated = measures["run_id"][measures["run_id"].duplicated()].unique()
    if len(duplicated):
        raise ValueError(f"run_id(s) {list(duplicated[:5])} appear more than once in the measures table")
    kept, counts = select_models(models, include_unreached)
    names = [c for c in measures.columns if c != "run_id"]
    values = measures.set_index("run_id")[names].apply(pd.to_numeric, errors="coerce")
    values = values.reindex(kept["run_id"].to_numpy()).reset_index(drop=True)
    seed = [SEED] if SEED in kept.columns and SEED not in axes else []
    base = kept[[*axes, *seed]].reset_index(drop=True)
    base[GAP] = pd.to_numeric(kept[gap], errors="coerce").to_numpy()
    base["width"] = kept["width"].to_numpy()
    base[CONFIG] = configuration_codes(kept.reset_index(drop=True), axes)
    # models without a gap cannot be ranked by any measure
    has_gap = base[GAP].notna().to_numpy()
    return AnalysisInput(base.loc[has_gap].reset_index(drop=True), values.loc[has_gap].reset_index(drop=True),
                         axes, counts, gap)


# ---------------------------------------------------------------------------------------------------------------
# One measure in one width
# ---------------------------------------------------------------------------------------------------------------

def _replicates(frame: pd.DataFrame, counts: np.ndarray, cmi_counts: np.ndarray | None,
                axes: tuple[str, ...], fixed: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Bootstrap replicates of τ, every ψ_i, Ψ and CMI from the multiplicity vectors (fast quadratic forms)."""
    n_boot = counts.shape[0]
    sx, sy = pair_signs(frame[MU]), pair_signs(frame[GAP])
    replicates = {"tau": tau_replicates(counts, sx, sy)}
    codes = {c: level_codes(frame[c]) for c in (*axes, *fixed)}
    replicate = joint_codes([codes[c] for c in fixed], len(frame))
    psis = []
    for axis in axes:
        keys = [c for c in (*axes, *fixed) if c != axis]
        psi = psi_replicates(counts, sx, sy, joint_codes([codes[k] for k in keys], len(frame)), codes[axis],
                             replicate)
        replicates[f"psi:{axis}"] = psi
        psis.append(psi)
    replicates["Psi"] = Psi_replicates(psis, n_boot)
    replicates["cmi"] = (cmi_replicates(cmi_counts, sx, sy, {a: codes[a] for a in axes})
                         if cmi_counts is not None else np.full(1, np.nan))
    return replicates


def _measure_rows(frame: pd.DataFrame, counts: np.ndarray, cmi_counts: np.ndarray | None, width, measure: str,
                  axes: tuple[str, ...], level: float) -> tuple[list[dict], dict[str, np.ndarray]]:
    """The rows of one measure in one width, and its τ and Ψ replicates; ``frame`` holds the models with both
    values, ``counts`` their columns of the width's multiplicity vectors."""
    fixed = (SEED,) if SEED in frame.columns and SEED not in axes else ()
    nan = (math.nan, math.nan)
    if len(frame):
        replicates = _replicates(frame, counts, cmi_counts, axes, fixed)
    else:
        replicates = {key: np.full(counts.shape[0], np.nan) for key in ("tau", "Psi", "cmi",
                                                                       *(f"psi:{a}" for a in axes))}

    def ci(key):
        return percentile_interval(replicates[key], level) if len(frame) else nan

    row = {"width": width, "measure": measure, "n_models": len(frame)}
    rows = [{**row, "statistic": "tau", "axis": "all", "value": kendall_tau(frame[MU], frame[GAP]),
             "ci_low": ci("tau")[0], "ci_high": ci("tau")[1], "n_groups": 1}]
    granulated = granulated_kendall(frame, MU, GAP, axes, fixed=fixed)
    for axis, r in granulated.per_axis.items():
        low, high = ci(f"psi:{axis}")
        rows.append({**row, "statistic": "psi", "axis": axis, "value": r.psi, "ci_low": low, "ci_high": high,
                     "n_groups": r.n_groups})
    used_groups = sum(r.n_groups for r in granulated.per_axis.values() if np.isfinite(r.psi))
    rows.append({**row, "statistic": "Psi", "axis": "all", "value": granulated.Psi, "ci_low": ci("Psi")[0],
                 "ci_high": ci("Psi")[1], "n_groups": used_groups})
    n_sets = sum(math.comb(len(axes), k) for k in range(min(2, len(axes)) + 1))
    cmi_ci = ci("cmi") if cmi_counts is not None else nan
    rows.append({**row, "statistic": "cmi", "axis": "all", "value": conditional_mi(frame, MU, GAP, axes),
                 "ci_low": cmi_ci[0], "ci_high": cmi_ci[1], "n_groups": n_sets})
    summary = summarize_sign_errors(environment_sign_errors(frame, MU, GAP, axes), axes)
    for axis in (*axes, "all"):
        for statistic in SIGN_ERROR_STATISTICS:
            rows.append({**row, "statistic": statistic, "axis": axis, "value": summary[axis][statistic],
                         "ci_low": math.nan, "ci_high": math.nan, "n_groups": summary[axis]["n_environments"]})
    return rows, {"tau": replicates["tau"], "Psi": replicates["Psi"]}


# ---------------------------------------------------------------------------------------------------------------
# The long table
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Correlations:
    """``measure_correlations``' result: the long table and the paired bootstrap replicates behind it."""
    table: pd.DataFrame
    replicates: dict  # width -> measure -> {"tau": (B,), "Psi": (B,)}, the same resamples for every measure


def measure_correlations(models: pd.DataFrame, measures: pd.DataFrame, gap: str = "gap_loss",
                         axes: Sequence[str] | None = None, include_unreached: bool = False, n_boot: int = 200,
                         seed: int = 0, n_boot_cmi: int | None = None, level: float = 0.95,
                         n_jobs: int | None = 1) -> Correlations:
    """Kendall τ, granulated ψ_i and Ψ, CMI and the robust sign-error of every measure, separately for each width.

    Parameters
    ----------
    models : pandas.DataFrame
        A zoo's ``models.csv``: ``run_id``, ``status``, ``reached_target``, ``width``, the ``gap`` column, the
        hyperparameter columns and, if present, ``seed`` (the replicates: never an axis).
    measures : pandas.DataFrame
        ``run_id`` and one column per measure (NaN where it failed; such models are left out of that measure only).
    gap : str, default "gap_loss"
        Generalization gap column of ``models`` (``gap_loss`` = test CE − train CE, or ``gap_acc``).
    axes : sequence of str, optional
        Candidate hyperparameter axes; default: those of ``selection.DEFAULT_AXES`` (variant, lr, batch_size,
        dropout, weight_decay, n_train, depth) that are columns of ``models``. Within a width only those that take
        ≥ 2 values among the kept models are granulated (and conditioned on by CMI, and make environments).
    include_unreached : bool, default False
        Keep finished runs that did not reach the CE target (Jiang et al.'s protocol leaves them out).
    n_boot : int, default 200
        Bootstrap resamples for the intervals. A resample is drawn once per width, for every measure and statistic
        (paired), by ``bootstrap.draw_multiplicities``: hierarchical (configurations, then seeds within them)
        when some configuration has several seeds, else plain model resampling.
    seed : int, default 0
        Seed of the resampling.
    n_boot_cmi : int or None, default None
        Resamples for the CMI interval; None = ``n_boot``; 0 = no CMI interval (NaN). CMI is the costly interval,
        O(n_boot_cmi · n²) for n models in a width.
    level : float, default 0.95
        Coverage of the percentile intervals.
    n_jobs : int or None, default 1
        Parallel processes over (width, measure) tasks, via joblib; -1 = all cores.

    Returns
    -------
    Correlations
        ``table``: long form with columns ``width, measure, statistic, axis, value, ci_low, ci_high, n_models,
        n_groups``; per width and measure the rows ``tau`` (axis "all"), ``psi`` (one per varied axis), ``Psi``
        ("all"), ``cmi`` ("all"), then ``sign_error_mean``, ``sign_error_q90``, ``sign_error_max`` per varied
        axis and for "all" (no interval). ``n_groups``: 1 for τ; ψ_i's groups of models differing only in axis i
        (same seed); for Ψ the sum over the axes that enter it; for CMI the conditioning sets S (|S| ≤ 2); for a
        sign-error the environments. ``table.attrs["counts"]`` holds ``select_models``' counts plus
        ``used_by_width``; ``table.attrs["settings"]`` the arguments, the varied axes and the bootstrap per width.
        ``replicates[width][measure]`` the τ and Ψ replicates.
    """
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    n_boot_cmi = n_boot if n_boot_cmi is None else int(n_boot_cmi)
    if n_boot_cmi < 0:
        raise ValueError(f"n_boot_cmi must be ≥ 0, got {n_boot_cmi!r}")
    data = analysis_input(models, measures, gap, axes, include_unreached)
    names = list(data.values.columns)

    tasks, keys, varied_by_width, used_by_width, bootstrap_by_width = [], [], {}, {}, {}
    for width in data.widths:
        base, values, varied = data.width_input(width)
        key = plain(width)
        varied_by_width[key], used_by_width[key] = list(varied), len(base)
        config = base[CONFIG].to_numpy()
        bootstrap_by_width[key] = HIERARCHICAL if is_hierarchical(config) else PLAIN
        counts = draw_multiplicities(n_boot, seed, config)
        cmi_counts = None if n_boot_cmi == 0 else (
            counts if n_boot_cmi == n_boot else draw_multiplicities(n_boot_cmi, seed, config))
        for measure in names:
            keep = values[measure].notna().to_numpy()
            frame = base.loc[keep].drop(columns=["width", CONFIG]).assign(**{MU: values[measure].to_numpy()[keep]})
            tasks.append((frame.reset_index(drop=True), counts[:, keep],
                          None if cmi_counts is None else cmi_counts[:, keep], key, measure, varied, level))
            keys.append((key, measure))

    if n_jobs in (None, 1) or len(tasks) < 2:
        # the products are small ((n_boot × n) @ (n × n)): BLAS threads only add overhead and oversubscribe a
        # shared machine; one thread measured 6x faster on 2 busy cores (README, analysis timings)
        with threadpool_limits(1):
            results = [_measure_rows(*task) for task in tasks]
    else:
        results = Parallel(n_jobs=n_jobs)(delayed(_measure_rows)(*task) for task in tasks)
    table = pd.DataFrame([row for rows, _ in results for row in rows], columns=CORRELATION_COLUMNS)
    table = table.astype({"n_models": int, "n_groups": int})
    replicates = {}
    for (width, measure), (_, reps) in zip(keys, results):
        replicates.setdefault(width, {})[measure] = reps
    table.attrs["counts"] = {**data.counts, "used_by_width": used_by_width}
    table.attrs["settings"] = {"gap": gap, "axes": list(data.axes), "varied_axes": varied_by_width,
                               "include_unreached": bool(include_unreached), "n_boot": int(n_boot),
                               "n_boot_cmi": n_boot_cmi, "level": level, "seed": int(seed),
                               "bootstrap": bootstrap_by_width}
    return Correlations(table, replicates)


def correlation_table(models: pd.DataFrame, measures: pd.DataFrame, **options) -> pd.DataFrame:
    """``measure_correlations(models, measures, **options).table``.

    Examples
    --------
    >>> models = pd.DataFrame({"run_id": list("abcd"), "status": "done", "reached_target": True, "width": 8,
    ...                        "lr": [1, 2, 1, 2], "batch_size": [32, 32, 64, 64], "seed": 0,
    ...                        "gap_loss": [0.1, 0.2, 0.3, 0.5]})
    >>> measures = pd.DataFrame({"run_id": list("abcd"), "mu": [1.0, 2.0, 4.0, 3.0]})
    >>> table = correlation_table(models, measures, n_boot=20)
    >>> table.loc[table["axis"] == "all", ["statistic", "value"]]
              statistic     value
    0               tau  0.666667
    3               Psi  0.500000
    4               cmi  0.349978
    11  sign_error_mean  0.250000
    12   sign_error_q90  0.700000
    13   sign_error_max  1.000000
    """
    return measure_correlations(models, measures, **options).table
