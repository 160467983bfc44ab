"""The one bootstrap of the analysis: resamples as multiplicity vectors, and every statistic's replicates from them.

A resample of n models is the vector c of how often each model was drawn (``draw_multiplicities``):

- **hierarchical** when some configuration (all hyperparameters but the seed) has several models: draw the
  configurations with replacement, then, inside each drawn configuration, as many of its models (seeds) as it has,
  with replacement. The intervals then hold the training noise (seeds) as well as the choice of configurations.
- **plain** model resampling (n models with replacement) when every configuration has one model.

Every interval of the suite (τ, ψ_i, Ψ, CMI, paired differences) is a percentile interval of replicates computed
from these vectors. For τ, ψ and CMI the replicates are quadratic forms in c over the original models' pair
matrices (a pair of distinct models (i, j) stands for c_i·c_j pairs of the resample; a model drawn c_i times adds
c_i(c_i − 1)/2 pairs tied in both measure and gap), so all replicates of a measure come from a few matrix products
instead of n_boot calls of the statistics (~100x faster at 70 models). ``resample_replicates`` evaluates any
statistic on the explicit resampled tables of the same vectors: the reference the tests pin the fast path to, and
the path for statistics without a fast form (``bootstrap_ci``).
"""
from __future__ import annotations

import itertools
import math
import warnings
from typing import Callable

import numpy as np
import pandas as pd
from scipy import sparse

from .stats import dense_ranks, joint_codes, seed_mean

__all__ = [
    "draw_multiplicities",
    "is_hierarchical",
    "percentile_interval",
    "resample_replicates",
    "bootstrap_ci",
    "pair_signs",
    "tau_replicates",
    "psi_replicates",
    "Psi_replicates",
    "cmi_replicates",
]


# ---------------------------------------------------------------------------------------------------------------
# Drawing resamples
# ---------------------------------------------------------------------------------------------------------------

def is_hierarchical(config: np.ndarray) -> bool:
    """Whether some configuration holds several models (seeds), i.e. whether resampling is two-level."""
    config = np.asarray(config)
    return config.size > 0 and np.unique(config).size < config.size


def draw_multiplicities(n_boot: int, seed: int, config: np.ndarray | None = None, n: int | None = None) -> np.ndarray:
    """(n_boot, n) multiplicity vectors: how often each model is drawn in each resample.

    Parameters
    ----------
    n_boot : int
        Number of resamples.
    seed : int
        Seed of the draws; the same seed and configurations give the same resamples.
    config : array of int of shape (n,), optional
        Configuration code of each model (models with the same code are seed replicates). None or all distinct:
        plain resampling of the n models. Otherwise hierarchical: configurations with replacement, then within each
        drawn configuration its size in models with replacement.
    n : int, optional
        Number of models when ``config`` is None.

    Examples
    --------
    Two configurations of two seeds each: a resample draws 2 configurations, then 2 seeds inside each.

    >>> counts = draw_multiplicities(3, 0, np.array([0, 0, 1, 1]))
    >>> counts.sum(axis=1), bool((counts[:, :2].sum(axis=1) % 2 == 0).all())
    (array([4., 4., 4.]), True)
    """
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    rng = np.random.default_rng(seed)
    if config is None or not is_hierarchical(config):
        n = len(config) if config is not None else int(n)
        rows = rng.integers(0, max(n, 1), size=(n_boot, n))
        counts = np.zeros((n_boot, n))
        np.add.at(counts, (np.repeat(np.arange(n_boot), n), rows.ravel()), 1.0)
        return counts
    config = np.unique(np.asarray(config), return_inverse=True)[1].ravel()
    n = config.size
    order = np.argsort(config, kind="stable")            # models of configuration k: order[start[k]:start[k]+size[k]]
    sizes = np.bincount(config)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    n_configs = sizes.size
    drawn = rng.integers(0, n_configs, size=(n_boot, n_configs))             # (B, C) configurations drawn
    slots = np.arange(int(sizes.max()))
    # each drawn configuration k gets sizes[k] uniform draws among its own models; unused slots are masked out
    uniform = rng.random(size=(n_boot, n_configs, slots.size))
    within = np.floor(uniform * sizes[drawn][..., None]).astype(np.int64)
    valid = slots[None, None, :] < sizes[drawn][..., None]
    models = order[starts[drawn][..., None] + np.minimum(within, sizes[drawn][..., None] - 1)]
    counts = np.zeros((n_boot, n))
    rows = np.broadcast_to(np.arange(n_boot)[:, None, None], models.shape)
    np.add.at(counts, (rows[valid], models[valid]), 1.0)
    return counts


def percentile_interval(replicates: np.ndarray, level: float = 0.95,
                        min_finite_fraction: float = 0.5) -> tuple[float, float]:
    """The ((1 − level)/2, (1 + level)/2) quantiles of the finite replicates.

    Replicates that are NaN or infinite (a resample with too few distinct models) are ignored; if fewer than
    ``min_finite_fraction`` of them (or fewer than 2) are finite, the interval is (NaN, NaN).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    replicates = np.asarray(replicates, dtype=float)
    finite = replicates[np.isfinite(replicates)]
    if finite.size < max(2, min_finite_fraction * replicates.size):
        return math.nan, math.nan
    low, high = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def resample_replicates(df: pd.DataFrame, statistic_fn: Callable[[pd.DataFrame], float],
                        counts: np.ndarray) -> np.ndarray:
    """``statistic_fn`` on each explicit resample (model i repeated counts[b, i] times, fresh 0..m−1 index)."""
    positions = np.arange(len(df))
    return np.array([statistic_fn(df.iloc[np.repeat(positions, row.astype(np.int64))].reset_index(drop=True))
                     for row in counts], dtype=float)


def bootstrap_ci(df: pd.DataFrame, statistic_fn: Callable[[pd.DataFrame], float], n_boot: int = 200,
                 level: float = 0.95, seed: int = 0, config: np.ndarray | None = None,
                 min_finite_fraction: float = 0.5) -> tuple[float, float]:
    """Percentile bootstrap interval of any statistic of the table, on ``draw_multiplicities``' resamples.

    The general path, for statistics without a fast form: it calls ``statistic_fn`` once per resample.

    Parameters
    ----------
    df : pandas.DataFrame
        One row per model.
    statistic_fn : callable
        ``statistic_fn(resampled_df) -> float``; a model drawn twice appears as two rows.
    n_boot, seed : int
        Resamples and their seed.
    level : float, default 0.95
        Coverage of the interval.
    config : array of int, optional
        Configuration code per row; rows sharing one are seed replicates and are resampled hierarchically.
    min_finite_fraction : float, default 0.5
        See ``percentile_interval``.

    Examples
    --------
    >>> from analysis.stats import kendall_tau
    >>> df = pd.DataFrame({"mu": [1.0, 2.0, 3.0, 4.0], "gap": [0.1, 0.2, 0.3, 0.4]})
    >>> bootstrap_ci(df, lambda d: kendall_tau(d["mu"], d["gap"]), n_boot=50)
    (1.0, 1.0)
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    if len(df) == 0:
        return math.nan, math.nan
    counts = draw_multiplicities(n_boot, seed, config, n=len(df))
    return percentile_interval(resample_replicates(df, statistic_fn, counts), level, min_finite_fraction)


# ---------------------------------------------------------------------------------------------------------------
# Fast replicates: quadratic forms in the multiplicities
# ---------------------------------------------------------------------------------------------------------------

def pair_signs(values) -> np.ndarray:
    """(n, n) sign(v_i − v_j) on dense ranks, so ±inf compare like any value."""
    ranks = dense_ranks(np.asarray(values, dtype=float))
    return np.sign(ranks[:, None] - ranks[None, :]).astype(float)


def _quadratic(counts: np.ndarray, matrix: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """Σ_{i,j} c_i M_ij c_j per resample (B,), or per group when ``groups`` (n, G one-hot) is given (B, G)."""
    weighted = counts * (counts @ matrix)
    return weighted.sum(axis=1) if groups is None else weighted @ groups


def _tau_b(concordance, n_pairs, tied_x, tied_y) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = concordance / np.sqrt((n_pairs - tied_x) * (n_pairs - tied_y))
    return np.where((tied_x < n_pairs) & (tied_y < n_pairs), tau, np.nan)


def _one_hot(codes: np.ndarray) -> np.ndarray:
    return (codes[:, None] == np.arange(int(codes.max(initial=-1)) + 1)[None, :]).astype(float)


def tau_replicates(counts: np.ndarray, sx: np.ndarray, sy: np.ndarray) -> np.ndarray:
    """τ-b of every resample (B,), as ``stats.kendall_tau`` on it; ``sx``, ``sy`` from ``pair_signs``."""
    total = counts.sum(axis=1)
    n_pairs = total * (total - 1) / 2
    concordance = 0.5 * _quadratic(counts, sx * sy)
    # ½(Σ_{i,j} c_i c_j [tie] − Σ c_i): tied pairs of distinct models plus c_i(c_i − 1)/2 copies of each model
    tied_x = 0.5 * (_quadratic(counts, (sx == 0).astype(float)) - total)
    tied_y = 0.5 * (_quadratic(counts, (sy == 0).astype(float)) - total)
    return _tau_b(concordance, n_pairs, tied_x, tied_y)


def psi_replicates(counts: np.ndarray, sx: np.ndarray, sy: np.ndarray, group: np.ndarray, axis_codes: np.ndarray,
                   replicate: np.ndarray) -> np.ndarray:
    """ψ_i of every resample (B,), as ``stats.granulated_kendall`` on it.

    ``group`` codes every other axis and the seed (models differing only in axis i), ``replicate`` the seed.
    """
    onehot = _one_hot(group)                                              # (n, G)
    same = group[:, None] == group[None, :]
    sizes = counts @ onehot                                               # (B, G)
    n_pairs = sizes * (sizes - 1) / 2
    concordance = 0.5 * _quadratic(counts, sx * sy * same, onehot)
    tied_x = 0.5 * (_quadratic(counts, ((sx == 0) & same).astype(float), onehot) - sizes)
    tied_y = 0.5 * (_quadratic(counts, ((sy == 0) & same).astype(float), onehot) - sizes)
    # a group is usable when the resample holds >= 2 distinct values of the axis in it
    combo = joint_codes([group, axis_codes], group.size)
    combo_group = np.zeros(combo.max() + 1, dtype=np.int64)
    combo_group[combo] = group
    present = ((counts > 0).astype(float) @ _one_hot(combo)) > 0          # (B, combos)
    varies = present.astype(float) @ _one_hot(combo_group) >= 2           # (B, G)
    used = varies & (tied_y < n_pairs)
    constant_measure = used & (tied_x == n_pairs)
    taus = np.where(constant_measure, 0.0, _tau_b(concordance, n_pairs, tied_x, tied_y))
    group_replicate = np.zeros(onehot.shape[1], dtype=np.int64)
    group_replicate[group] = replicate
    return seed_mean(taus, used, group_replicate)


def Psi_replicates(psis: list[np.ndarray], n_boot: int) -> np.ndarray:
    """Ψ of every resample: the mean of the finite ψ_i replicates (NaN where none is finite, as in stats)."""
    if not psis:
        return np.full(n_boot, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: Ψ is NaN there
        return np.nanmean(np.stack(psis, axis=1), axis=1)


def _cmi_chunk(counts: np.ndarray, sx: np.ndarray, sy: np.ndarray, codes: dict[str, np.ndarray],
               max_conditioning: int) -> np.ndarray:
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
        cell = joint_codes([pair_codes[axis] for axis in subset], first.size)
        n_cells = max(int(cell.max(initial=-1)) + 1, 1)
        key = cell * 4 + a * 2 + b
        indicator = sparse.csr_matrix((np.ones(first.size), (np.arange(first.size), key)),
                                      shape=(first.size, 4 * n_cells))
        n_ab = np.asarray(weight @ indicator).reshape(n_boot, n_cells, 2, 2)
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


def cmi_replicates(counts: np.ndarray, sx: np.ndarray, sy: np.ndarray, codes: dict[str, np.ndarray],
                   max_conditioning: int = 2) -> np.ndarray:
    """Conditional MI score of every resample (B,), as ``stats.conditional_mi`` on it."""
    n = counts.shape[1]
    # the (resamples x pairs) weights grow as n²: chunk the resamples to keep them near 160 MB at most
    chunk = max(1, int(2e7 // max(n * n, 1)))
    return np.concatenate([_cmi_chunk(counts[i:i + chunk], sx, sy, codes, max_conditioning)
                           for i in range(0, counts.shape[0], chunk)])
