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

import itertools
import json
import math
import time
import warnings
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

# Bootstrap replicates in multiplicity form. A resample of n models is the vector c of how often each model was drawn
# (the same draws as stats.bootstrap_ci for the same seed). Every pair count that τ-b, ψ_i and CMI need is then a
# quadratic form in c over the original models' pair matrices: a pair of distinct models (i, j) stands for c_i·c_j
# pairs of the resample, a model drawn c_i times adds c_i(c_i − 1)/2 pairs tied in both measure and gap. So all
# replicates of a measure come from a few matrix products instead of n_boot calls of the statistics (~100x faster
# at 70 models). The point values always come from analysis.stats, and tests pin every replicate to stats on the
# same resample.

def _multiplicities(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n): how often each model is drawn in each resample; the draws of ``stats.bootstrap_ci``."""
    rows = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    counts = np.zeros((n_boot, n))
    np.add.at(counts, (np.repeat(np.arange(n_boot), n), rows.ravel()), 1.0)
    return counts


def _percentile_interval(replicates: np.ndarray, level: float, min_finite_fraction: float = 0.5) -> tuple[float, float]:
    """``stats.bootstrap_ci``'s interval rule applied to given replicates."""
    finite = replicates[np.isfinite(replicates)]
    if finite.size < max(2, min_finite_fraction * replicates.size):
        return math.nan, math.nan
    low, high = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _pair_signs(values: pd.Series) -> np.ndarray:
    """(n, n) sign(v_i − v_j) on dense ranks, so ±inf compare like any value."""
    ranks = np.unique(values.to_numpy(dtype=float), return_inverse=True)[1].ravel()
    return np.sign(ranks[:, None] - ranks[None, :]).astype(float)


def _quadratic(counts: np.ndarray, matrix: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """Σ_{i,j} c_i M_ij c_j per resample (B,), or per group when ``groups`` (n, G one-hot) is given (B, G)."""
    weighted = counts * (counts @ matrix)
    return weighted.sum(axis=1) if groups is None else weighted @ groups


def _tau_b(concordance, n_pairs, tied_x, tied_y) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = concordance / np.sqrt((n_pairs - tied_x) * (n_pairs - tied_y))
    return np.where((tied_x < n_pairs) & (tied_y < n_pairs), tau, np.nan)


def _tau_replicates(counts: np.ndarray, sx: np.ndarray, sy: np.ndarray) -> np.ndarray:
    """τ-b of every resample, as ``stats.kendall_tau`` on it."""
    n = counts.shape[1]
    n_pairs = n * (n - 1) / 2
    concordance = 0.5 * _quadratic(counts, sx * sy)
    # ½(Σ_{i,j} c_i c_j [tie] − Σ c_i): tied pairs of distinct models plus c_i(c_i − 1)/2 copies of each model
    tied_x = 0.5 * (_quadratic(counts, (sx == 0).astype(float)) - n)
    tied_y = 0.5 * (_quadratic(counts, (sy == 0).astype(float)) - n)
    return _tau_b(concordance, n_pairs, tied_x, tied_y)


def _joint_codes(codes: list[np.ndarray], n: int) -> np.ndarray:
    """One code 0..k−1 per distinct tuple of the given integer codes (all zeros for no codes)."""
    if not codes:
        return np.zeros(n, dtype=np.int64)
    return np.unique(np.stack(codes, axis=1), axis=0, return_inverse=True)[1].ravel().astype(np.int64)


def _one_hot(codes: np.ndarray) -> np.ndarray:
    return (codes[:, None] == np.arange(int(codes.max(initial=-1)) + 1)[None, :]).astype(float)


def _psi_replicates(counts: np.ndarray, sx: np.ndarray, sy: np.ndarray, group: np.ndarray,
                    axis_codes: np.ndarray) -> np.ndarray:
    """ψ_i of every resample, as ``stats.granulated_kendall`` on it; ``group`` codes every other axis and seed."""
    onehot = _one_hot(group)                                              # (n, G)
    same = group[:, None] == group[None, :]
    sizes = counts @ onehot                                               # (B, G)
    n_pairs = sizes * (sizes - 1) / 2
    concordance = 0.5 * _quadratic(counts, sx * sy * same, onehot)
    tied_x = 0.5 * (_quadratic(counts, ((sx == 0) & same).astype(float), onehot) - sizes)
    tied_y = 0.5 * (_quadratic(counts, ((sy == 0) & same).astype(float), onehot) - sizes)
    # a group is usable when the resample holds >= 2 distinct values of the axis in it
    combo = _joint_codes([group, axis_codes], group.size)
    combo_group = np.zeros(combo.max() + 1, dtype=np.int64)
    combo_group[combo] = group
    present = ((counts > 0).astype(float) @ _one_hot(combo)) > 0          # (B, combos)
    varies = present.astype(float) @ _one_hot(combo_group) >= 2           # (B, G)
    used = varies & (tied_y < n_pairs)
    constant_measure = used & (tied_x == n_pairs)
    taus = np.where(constant_measure, 0.0, _tau_b(concordance, n_pairs, tied_x, tied_y))
    n_used = used.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        psi = np.where(used, taus, 0.0).sum(axis=1) / n_used
    return np.where(n_used > 0, psi, np.nan)


def _cmi_replicates(counts: np.ndarray, sx: np.ndarray, sy: np.ndarray, codes: dict[str, np.ndarray],
                    max_conditioning: int = 2) -> np.ndarray:
    """Conditional MI score of every resample, as ``stats.conditional_mi`` on it."""
    from scipy import sparse

    first, second = np.nonzero((sx != 0) & (sy != 0))       # ordered pairs of distinct models, untied
    weight = counts[:, first] * counts[:, second]             # (B, P): copies of each pair in each resample
    a = (sx[first, second] > 0).astype(np.int64)
    b = (sy[first, second] > 0).astype(np.int64)
    n_boot = counts.shape[0]
    total = weight.sum(axis=1)[:, None, None, None]
    pair_codes = {axis: c[first] * (int(c.max(initial=0)) + 1) + c[second] for axis, c in codes.items()}
    ratios = []
    axes = list(codes)
    subsets = [s for size in range(min(max_conditioning, len(axes)) + 1) for s in itertools.combinations(axes, size)]
    for subset in subsets:
        cell = np.zeros(first.size, dtype=np.int64)
        for axis in subset:
            cell = np.unique(cell * (int(pair_codes[axis].max(initial=0)) + 1) + pair_codes[axis],
                             return_inverse=True)[1].ravel()
        n_cells = int(cell.max(initial=-1)) + 1
        key = cell * 4 + a * 2 + b
        indicator = sparse.csr_matrix((np.ones(first.size), (np.arange(first.size), key)),
                                      shape=(first.size, 4 * max(n_cells, 1)))
        n_ab = np.asarray(weight @ indicator).reshape(n_boot, max(n_cells, 1), 2, 2)
        n_u = n_ab.sum(axis=(2, 3), keepdims=True)
        n_a = n_ab.sum(axis=3, keepdims=True)
        n_b = n_ab.sum(axis=2, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            mi = np.where(n_ab > 0, n_ab / total * np.log(n_ab * n_u / (n_a * n_b)), 0.0).sum(axis=(1, 2, 3))
            entropy = -np.where(n_b > 0, n_b / total * np.log(n_b / n_u), 0.0).sum(axis=(1, 2, 3))
            ratios.append(np.where(entropy > 0, np.clip(mi / entropy, 0.0, 1.0), np.nan))
    ratios = np.stack(ratios, axis=1)
    finite = np.isfinite(ratios).any(axis=1)
    return np.where(finite, np.nanmin(np.where(np.isfinite(ratios), ratios, np.inf), axis=1), np.nan)


def _weighted_intervals(frame: pd.DataFrame, axes: tuple[str, ...], fixed: tuple[str, ...], n_boot: int,
                        n_boot_cmi: int, level: float, seed: int) -> dict[str, tuple[float, float]]:
    """Intervals of τ, every ψ_i, Ψ and CMI from the multiplicity-form replicates."""
    nan = (math.nan, math.nan)
    n = len(frame)
    if n == 0:
        return {"tau": nan, "Psi": nan, "cmi": nan, **{f"psi:{axis}": nan for axis in axes}}
    sx, sy = _pair_signs(frame[_MU]), _pair_signs(frame[_GAP])
    counts = _multiplicities(n, n_boot, seed)
    intervals = {"tau": _percentile_interval(_tau_replicates(counts, sx, sy), level)}
    codes = {c: pd.factorize(frame[c], use_na_sentinel=False)[0].astype(np.int64) for c in (*axes, *fixed)}
    psis = []
    for axis in axes:
        keys = [c for c in (*axes, *fixed) if c != axis]
        psi = _psi_replicates(counts, sx, sy, _joint_codes([codes[k] for k in keys], n), codes[axis])
        intervals[f"psi:{axis}"] = _percentile_interval(psi, level)
        psis.append(psi)
    if psis:
        stacked = np.stack(psis, axis=1)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: Ψ is NaN there, as in stats
            intervals["Psi"] = _percentile_interval(np.nanmean(stacked, axis=1), level)
    else:
        intervals["Psi"] = nan
    if n_boot_cmi > 0:
        cmi_counts = counts if n_boot_cmi == n_boot else _multiplicities(n, n_boot_cmi, seed)
        # the (resamples x pairs) weights grow as n²: chunk the resamples to keep them near 160 MB at most
        chunk = max(1, int(2e7 // (n * n)))
        replicates = np.concatenate([_cmi_replicates(cmi_counts[i:i + chunk], sx, sy, {a: codes[a] for a in axes})
                                     for i in range(0, n_boot_cmi, chunk)])
        intervals["cmi"] = _percentile_interval(replicates, level)
    else:
        intervals["cmi"] = nan
    return intervals


def _resampled_intervals(frame: pd.DataFrame, axes: tuple[str, ...], n_boot: int, n_boot_cmi: int, level: float,
                         seed: int) -> dict[str, tuple[float, float]]:
    """The same intervals by ``stats.bootstrap_ci`` over explicit resamples: the reference, ~100x slower."""
    def ci(fn, n):
        return bootstrap_ci(frame, fn, n_boot=n, level=level, seed=seed) if n > 0 else (math.nan, math.nan)

    intervals = {"tau": ci(lambda d: kendall_tau(d[_MU], d[_GAP]), n_boot),
                 "Psi": ci(lambda d: granulated_kendall(d, _MU, _GAP, axes, fixed=_FIXED).Psi, n_boot),
                 "cmi": ci(lambda d: conditional_mi(d, _MU, _GAP, axes), n_boot_cmi)}
    for axis in axes:
        intervals[f"psi:{axis}"] = ci(lambda d: granulated_kendall(d, _MU, _GAP, axes, fixed=_FIXED).psi[axis],
                                      n_boot)
    return intervals


def _measure_rows(frame: pd.DataFrame, width, measure: str, axes: tuple[str, ...], n_boot: int, n_boot_cmi: int,
                  level: float, seed: int, bootstrap: str) -> list[dict]:
    """The τ, ψ_i, Ψ and CMI rows of one measure in one width; ``frame`` holds only models with both values."""
    fixed = tuple(c for c in _FIXED if c in frame.columns and c not in axes)
    if bootstrap == "weighted":
        cis = _weighted_intervals(frame, axes, fixed, n_boot, n_boot_cmi, level, seed)
    else:
        cis = _resampled_intervals(frame, axes, n_boot, n_boot_cmi, level, seed)
    row = {"width": width, "measure": measure, "n_models": len(frame)}

    rows = [{**row, "statistic": "tau", "axis": "all", "value": kendall_tau(frame[_MU], frame[_GAP]),
             "ci_low": cis["tau"][0], "ci_high": cis["tau"][1], "n_groups": 1}]
    granulated = granulated_kendall(frame, _MU, _GAP, axes, fixed=_FIXED)
    for axis, r in granulated.per_axis.items():
        low, high = cis[f"psi:{axis}"]
        rows.append({**row, "statistic": "psi", "axis": axis, "value": r.psi, "ci_low": low, "ci_high": high,
                     "n_groups": r.n_groups})
    used_groups = sum(r.n_groups for r in granulated.per_axis.values() if np.isfinite(r.psi))
    rows.append({**row, "statistic": "Psi", "axis": "all", "value": granulated.Psi, "ci_low": cis["Psi"][0],
                 "ci_high": cis["Psi"][1], "n_groups": used_groups})
    n_sets = sum(math.comb(len(axes), k) for k in range(min(2, len(axes)) + 1))
    rows.append({**row, "statistic": "cmi", "axis": "all", "value": conditional_mi(frame, _MU, _GAP, axes),
                 "ci_low": cis["cmi"][0], "ci_high": cis["cmi"][1], "n_groups": n_sets})
    return rows


def _varied_axes(table: pd.DataFrame, axes: Sequence[str]) -> tuple[str, ...]:
    return tuple(a for a in axes if table[a].nunique(dropna=False) > 1)


def correlation_table(models: pd.DataFrame, measures: pd.DataFrame, gap: str = "gap_loss",
                      axes: Sequence[str] = DEFAULT_AXES, include_unreached: bool = False, n_boot: int = 200,
                      seed: int = 0, n_boot_cmi: int | None = None, level: float = 0.95,
                      bootstrap: str = "weighted", n_jobs: int | None = 1) -> pd.DataFrame:
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
        Bootstrap resamples of the models (within the width) for the intervals.
    seed : int, default 0
        Seed of the resampling; every statistic and measure sees the same resamples (paired intervals), the ones
        ``stats.bootstrap_ci(..., n_boot, seed=seed)`` draws.
    n_boot_cmi : int or None, default None
        Resamples for the CMI interval; None = ``n_boot``; 0 = no CMI interval (NaN). CMI is the costly interval,
        O(n_boot_cmi · n²) for n models in a width: ~0.05 s per measure at 70 models, ~20 s at 720; lower it for
        zoos with many hundreds of models per width.
    level : float, default 0.95
        Coverage of the percentile intervals.
    bootstrap : {"weighted", "resample"}, default "weighted"
        How the replicates are computed. Both give the same intervals (a test checks it to 1e-12):
        "resample" calls ``stats.bootstrap_ci`` with the statistics on each resampled table (the reference);
        "weighted" computes every replicate at once from how often each model was drawn (see the module's
        comment), about 100x faster: 144 models x 45 measures x 200 resamples in seconds instead of minutes.
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
    4       cmi         all  0.349978
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
    n_boot_cmi = n_boot if n_boot_cmi is None else int(n_boot_cmi)
    if bootstrap not in ("weighted", "resample"):
        raise ValueError(f"bootstrap must be 'weighted' or 'resample', got {bootstrap!r}")

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

    arguments = (n_boot, n_boot_cmi, level, seed, bootstrap)
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
                               "n_boot_cmi": n_boot_cmi, "level": level, "seed": int(seed), "fixed": fixed,
                               "bootstrap": bootstrap}
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
                seed: int = 0, log: Callable[[str], object] | None = print, axes: Sequence[str] = DEFAULT_AXES,
                n_boot_cmi: int | None = None, n_jobs: int | None = 1) -> dict:
    """Analyse a zoo directory: correlations, Kendall tables, plots and report, written beside the inputs.

    Writes ``correlations.csv`` (``correlation_table``'s long table), ``analysis_summary.json`` (model counts,
    settings, timings), ``tables/kendall_width<W>.{csv,md,tex}``, ``plots/*.{png,pdf}`` and ``report.{md,html}``.
    Every file is written to a temporary name and renamed, so a rerun replaces it whole; plots and tables of an
    earlier run that this run no longer makes (a measure or width gone) are removed.

    Parameters
    ----------
    zoo_dir : str or Path
        The zoo directory (see ``read_zoo`` for what it must hold).
    gap, include_unreached, n_boot, seed, axes, n_boot_cmi
        As in ``correlation_table``.
    log : callable or None, default print
        Receives one line per stage.
    n_jobs : int or None, default 1
        Processes for the statistics (joblib; -1 = all cores); one is enough for a few hundred models.

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
    correlations = correlation_table(data.models, data.measures, gap=gap, axes=axes,
                                     include_unreached=include_unreached, n_boot=n_boot, seed=seed,
                                     n_boot_cmi=n_boot_cmi, n_jobs=n_jobs)
    counts = correlations.attrs["counts"]
    t_corr = time.perf_counter() - t0
    say(f"correlations: {correlations['measure'].nunique()} measures x {len(counts['used_by_width'])} width(s) "
        f"on {counts['used']} of {counts['total']} models in {t_corr:.1f} s")
    correlations_path = directory / "correlations.csv"
    tables.write_text_atomic(correlations_path, correlations.to_csv(index=False))

    t0 = time.perf_counter()
    table_paths, kendall = tables.write_kendall_tables(correlations, data.info, directory / "tables", gap=gap)
    say(f"tables: {len(table_paths)} files -> {directory / 'tables'}")

    plot_result = plots.write_plots(data, correlations, directory / "plots", gap=gap, tables=kendall)
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
