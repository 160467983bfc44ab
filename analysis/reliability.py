"""Reliability of the study itself: how much of what it measures is training noise (seeds).

Computed per width on zoos where some width has ≥ 2 seeds, from the models the analysis uses:

- ``seed_share``: the seed share of the gap's variance, Σ (g − mean of its configuration)² / Σ (g − grand mean)²
  over the models of configurations with ≥ 2 seeds (within-configuration over total sum of squares, pooled over
  seeds). 0: seeds never change the gap; 1: configurations do not matter, only seeds.
- ``gap_tau``: Kendall τ-b between two seeds' gaps over the configurations that both trained, averaged over all
  pairs of seeds (the replicate correlation of the study's target).
- ``ranking_tau_psi_<axis>`` (one column per varied axis, after the fixed columns): the same agreement for ψ of
  that axis alone. It says which axes carry signal: Ψ averages the ψ's, so an axis whose ψ is seed noise (its
  agreement near 0) makes the ranking by Ψ irreproducible however well the other axes resolve.
- ``ranking_tau_Psi`` / ``ranking_tau_tau``: split the models by seed, compute Ψ (resp. τ) of every measure on
  each part, and take Kendall τ-b between two parts' values over the measures; mean over pairs of parts. 1: the
  seeds agree on which measure predicts best; near 0: the ranking of the measures is noise.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd

from .correlations import CONFIG, GAP, MU, AnalysisInput, plain
from .selection import SEED
from .stats import granulated_kendall, kendall_tau

__all__ = ["RELIABILITY_COLUMNS", "seed_share", "replicate_gap_tau", "ranking_agreement", "reliability_table"]

RELIABILITY_COLUMNS = ["width", "n_models", "n_configurations", "n_seeds", "seed_share", "gap_tau",
                       "ranking_tau_Psi", "ranking_tau_tau", "n_measures"]


def seed_share(gap: np.ndarray, config: np.ndarray) -> float:
    """Within-configuration over total sum of squares of the gap, over configurations with ≥ 2 models.

    >>> seed_share(np.array([1.0, 3.0, 5.0, 7.0]), np.array([0, 0, 1, 1]))
    0.2
    """
    gap, config = np.asarray(gap, dtype=float), np.asarray(config)
    keep = np.isfinite(gap)
    gap, config = gap[keep], config[keep]
    codes, inverse, sizes = np.unique(config, return_inverse=True, return_counts=True)
    replicated = sizes[inverse.ravel()] >= 2
    gap, inverse = gap[replicated], inverse.ravel()[replicated]
    if gap.size < 2:
        return math.nan
    means = np.bincount(inverse, weights=gap) / np.maximum(np.bincount(inverse), 1)
    total = float(((gap - gap.mean()) ** 2).sum())
    return float(((gap - means[inverse]) ** 2).sum()) / total if total > 0 else math.nan


def replicate_gap_tau(frame: pd.DataFrame, gap: str, config: str, seed: str = SEED) -> float:
    """Mean over pairs of seeds of Kendall τ-b between their gaps over the configurations both have."""
    wide = frame.pivot_table(index=config, columns=seed, values=gap, aggfunc="mean")
    taus = [kendall_tau(wide[a], wide[b]) for a, b in itertools.combinations(wide.columns, 2)]
    taus = [t for t in taus if np.isfinite(t)]
    return float(np.mean(taus)) if taus else math.nan


def ranking_agreement(parts: dict, values: pd.DataFrame) -> float:
    """Mean over pairs of parts of Kendall τ-b between their per-measure values (``values``: measures × parts)."""
    taus = [kendall_tau(values[a], values[b]) for a, b in itertools.combinations(parts, 2)]
    taus = [t for t in taus if np.isfinite(t)]
    return float(np.mean(taus)) if taus else math.nan


def _per_seed_statistics(base: pd.DataFrame, values: pd.DataFrame, axes: tuple[str, ...]) -> dict[str, pd.DataFrame]:
    """Ψ, τ and each axis's ψ of every measure on each seed's models: frames of measures × seeds, keyed "Psi",
    "tau" and "psi_<axis>"."""
    out: dict[str, dict] = {"Psi": {}, "tau": {}, **{f"psi_{axis}": {} for axis in axes}}
    for seed_value, part in base.groupby(SEED, sort=True):
        columns: dict[str, dict] = {key: {} for key in out}
        for measure in values.columns:
            frame = part.assign(**{MU: values.loc[part.index, measure].to_numpy()})
            frame = frame.loc[frame[MU].notna()]
            granulated = granulated_kendall(frame, MU, GAP, axes, fixed=()) if axes else None
            columns["Psi"][measure] = granulated.Psi if granulated else math.nan
            columns["tau"][measure] = kendall_tau(frame[MU], frame[GAP])
            for axis in axes:
                columns[f"psi_{axis}"][measure] = granulated.per_axis[axis].psi
        for key, column in columns.items():
            out[key][seed_value] = column
    return {key: pd.DataFrame(frame) for key, frame in out.items()}


def reliability_table(data: AnalysisInput) -> pd.DataFrame:
    """One row per width with ≥ 2 seeds among the analysed models (``RELIABILITY_COLUMNS``); empty otherwise."""
    rows = []
    if SEED not in data.base.columns:
        return pd.DataFrame(columns=RELIABILITY_COLUMNS)
    for width in data.widths:
        base, values, varied = data.width_input(width)
        seeds = base[SEED].dropna().unique()
        if len(seeds) < 2:
            continue
        statistics = _per_seed_statistics(base, values, varied)
        rows.append({"width": plain(width), "n_models": len(base),
                     "n_configurations": int(base[CONFIG].nunique()), "n_seeds": len(seeds),
                     "seed_share": seed_share(base[GAP].to_numpy(), base[CONFIG].to_numpy()),
                     "gap_tau": replicate_gap_tau(base, GAP, CONFIG),
                     "ranking_tau_Psi": ranking_agreement(statistics["Psi"].columns, statistics["Psi"]),
                     "ranking_tau_tau": ranking_agreement(statistics["tau"].columns, statistics["tau"]),
                     "n_measures": values.shape[1],
                     **{f"ranking_tau_psi_{axis}": ranking_agreement(statistics[f"psi_{axis}"].columns,
                                                                     statistics[f"psi_{axis}"]) for axis in varied}})
    per_axis = sorted({key for row in rows for key in row} - set(RELIABILITY_COLUMNS))
    return pd.DataFrame(rows, columns=RELIABILITY_COLUMNS + per_axis)
