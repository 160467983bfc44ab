"""Rank statistics that say how well a complexity measure predicts the generalization gap.

Pure functions on any DataFrame with one row per trained model, one column per measure, a gap column and one
column per hyperparameter (reference/measure-formulas.md §8.9-8.10):

- ``kendall_tau``: Kendall's τ-b over all models (ties handled, as ``scipy.stats.kendalltau``'s default).
- ``granulated_kendall``: Jiang et al.'s ψ_i per hyperparameter axis and Ψ = mean_i ψ_i.
- ``conditional_mi`` / ``conditional_mi_detail``: Jiang et al.'s conditional mutual information score, §4.
- ``dense_ranks``, ``joint_codes``, ``level_codes``: the integer codings the bootstrap's fast path shares.

Intervals of all of these come from ``analysis.bootstrap`` (one implementation of the resampling).

Sign convention everywhere: positive means a larger measure goes with a larger gap, which is what a good complexity
measure should do.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

__all__ = [
    "kendall_tau",
    "AxisPsi",
    "GranulatedResult",
    "granulated_kendall",
    "conditional_mi",
    "conditional_mi_detail",
    "seed_mean",
    "dense_ranks",
    "joint_codes",
    "level_codes",
]

# ---------------------------------------------------------------------------------------------------------------
# Kendall τ-b
# ---------------------------------------------------------------------------------------------------------------

def _as_float_vector(values, name: str) -> np.ndarray:
    if isinstance(values, (pd.Series, pd.Index)):
        # nullable dtypes (Float64, Int64) hold pd.NA, which np.asarray(dtype=float) refuses
        array = values.to_numpy(dtype=float, na_value=np.nan)
    else:
        array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def dense_ranks(values: np.ndarray) -> np.ndarray:
    """Integer ranks 0..k−1, ties sharing one: their differences have exact signs, even at ±inf."""
    return np.unique(values, return_inverse=True)[1].ravel().astype(np.int64)


def joint_codes(codes: Sequence[np.ndarray], size: int) -> np.ndarray:
    """One compact code 0..k−1 per distinct tuple of the given integer codes (mixed radix, re-compressed)."""
    joint = np.zeros(size, dtype=np.int64)
    for code in codes:
        # re-compressing after each column keeps the radix product from overflowing
        joint = np.unique(joint * (int(code.max(initial=0)) + 1) + code, return_inverse=True)[1].ravel()
    return joint


def level_codes(values: pd.Series) -> np.ndarray:
    """Integer code per row for a hyperparameter column; NaN is a level of its own."""
    return pd.factorize(values, use_na_sentinel=False)[0].astype(np.int64)


@dataclass(frozen=True)
class _PairCounts:
    """Per-group pair counts of Kendall's τ-b, for groups 0..G−1."""
    concordance: np.ndarray  # n_c − n_d
    n_pairs: np.ndarray      # n0 = s(s − 1)/2 for a group of size s
    tied_x: np.ndarray       # n1, pairs tied in x (tied in both included)
    tied_y: np.ndarray       # n2, pairs tied in y

    def tau_b(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            tau = self.concordance / np.sqrt((self.n_pairs - self.tied_x) * (self.n_pairs - self.tied_y))
        return np.where((self.tied_x < self.n_pairs) & (self.tied_y < self.n_pairs), tau, np.nan)


def _pair_counts(group: np.ndarray, rank_x: np.ndarray, rank_y: np.ndarray) -> _PairCounts:
    """Count, inside each group, the pairs that are concordant, discordant and tied in x or y.

    Rows sorted by group put a group's pairs at offsets 1..size−1 of each other, so one vectorised step per offset
    covers every pair of every group: O(n · largest group) time, O(n) memory.
    """
    order = np.argsort(group, kind="stable")
    g, x, y = group[order], rank_x[order], rank_y[order]
    n_groups = int(g.max()) + 1 if g.size else 0
    sizes = np.bincount(g, minlength=n_groups)
    concordance, tied_x, tied_y = (np.zeros(n_groups, dtype=np.int64) for _ in range(3))
    for offset in range(1, int(sizes.max(initial=0))):
        same = g[offset:] == g[:-offset]
        g_pair = g[offset:][same]
        sign_x = np.sign(x[offset:][same] - x[:-offset][same])
        sign_y = np.sign(y[offset:][same] - y[:-offset][same])
        concordance += np.bincount(g_pair, weights=sign_x * sign_y, minlength=n_groups).astype(np.int64)
        tied_x += np.bincount(g_pair[sign_x == 0], minlength=n_groups)
        tied_y += np.bincount(g_pair[sign_y == 0], minlength=n_groups)
    return _PairCounts(concordance, sizes * (sizes - 1) // 2, tied_x, tied_y)


def kendall_tau(x, y) -> float:
    """Kendall's τ-b rank correlation, with ties in either variable handled.

    τ_b = (n_c − n_d) / sqrt((n_0 − n_1)(n_0 − n_2)), where n_c and n_d count concordant and discordant pairs,
    n_0 = n(n − 1)/2, and n_1, n_2 count the pairs tied in ``x`` and in ``y``. Equals
    ``scipy.stats.kendalltau(x, y).statistic`` (variant 'b'); without ties it is Jiang et al.'s τ (τ-a).

    Parameters
    ----------
    x, y : array-like of shape (n,)
        Paired observations, e.g. a measure and the generalization gap. A pair with a NaN on either side is dropped.
        Infinite values are ordinary (extreme) ranks.

    Returns
    -------
    float
        τ-b in [−1, 1]; NaN when fewer than 2 pairs remain or either side is constant.

    Notes
    -----
    O(n²) time in n vectorised steps with O(n) memory: about 0.1 s for n = 3000.

    Examples
    --------
    Of the 6 pairs, only (2, 3) is discordant: (5 − 1)/6.

    >>> round(kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]), 4)
    0.6667
    """
    x = _as_float_vector(x, "x")
    y = _as_float_vector(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    n = x.size
    if n < 2:
        return math.nan
    return float(_pair_counts(np.zeros(n, dtype=np.int64), dense_ranks(x), dense_ranks(y)).tau_b()[0])


# ---------------------------------------------------------------------------------------------------------------
# Granulated Kendall ψ_i and Ψ
# ---------------------------------------------------------------------------------------------------------------

def _require_columns(df: pd.DataFrame, columns: Sequence[str], role: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise KeyError(f"{role} column(s) {missing} not in the table; available: {list(df.columns)}")


def _axes_tuple(axes: Sequence[str] | str) -> tuple[str, ...]:
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    if len(set(axes)) != len(axes):
        raise ValueError(f"axes must be distinct, got {list(axes)}")
    return axes


@dataclass(frozen=True)
class AxisPsi:
    """ψ_i of one hyperparameter axis and how many groups it stands on."""
    axis: str
    psi: float                   # mean τ-b over the used groups; NaN when no group is usable
    n_groups: int                # groups used (each weighs equally in psi)
    n_skipped: int               # groups skipped: < 2 models, < 2 distinct axis values, or a constant gap
    n_constant_measure: int = 0  # used groups where the measure is constant: τ counted as 0 (Jiang's τ), see notes


@dataclass(frozen=True)
class GranulatedResult:
    """Granulated Kendall coefficients of one measure (Jiang et al. §3)."""
    measure: str
    gap: str
    per_axis: dict[str, AxisPsi]  # axis name -> its ψ, in the order of ``axes``
    Psi: float                    # mean of the finite ψ_i; NaN when none is finite
    n_axes: int                   # number of axes with a finite ψ_i, i.e. that enter Ψ
    fixed: tuple[str, ...]        # extra columns held fixed inside every group (e.g. seed)

    @property
    def psi(self) -> dict[str, float]:
        """ψ_i by axis name."""
        return {axis: result.psi for axis, result in self.per_axis.items()}


def _group_replicate(group: np.ndarray, replicate: np.ndarray) -> np.ndarray:
    """The replicate (seed) code of each group 0..G−1; a group lies inside one replicate by construction."""
    of_group = np.zeros(int(group.max(initial=-1)) + 1, dtype=np.int64)
    of_group[group] = replicate
    return of_group


def seed_mean(taus: np.ndarray, used: np.ndarray, group_replicate: np.ndarray) -> np.ndarray:
    """ψ from per-group τ: the mean over used groups within each replicate, then the mean over replicates.

    ``taus`` and ``used`` are (B, G) (B = 1 for a point value, or one row per bootstrap resample); returns (B,),
    NaN where no group is used. The bootstrap's fast path calls this too, so point and replicates agree.
    """
    onehot = (group_replicate[:, None] == np.arange(int(group_replicate.max(initial=-1)) + 1)[None, :]).astype(float)
    n_used = used.astype(float) @ onehot                                  # (B, S) used groups per replicate
    total = np.where(used, taus, 0.0) @ onehot
    with np.errstate(divide="ignore", invalid="ignore"):
        per_replicate = total / n_used
        n_replicates = (n_used > 0).sum(axis=1)
        psi = np.where(n_used > 0, per_replicate, 0.0).sum(axis=1) / n_replicates
    return np.where(n_replicates > 0, psi, np.nan)


def granulated_kendall(df: pd.DataFrame, measure: str, gap: str, axes: Sequence[str],
                       fixed: Sequence[str] = ("seed",)) -> GranulatedResult:
    """Granulated Kendall coefficient ψ_i per hyperparameter axis and their mean Ψ (Jiang et al. §3).

    For axis i, models are grouped by the values of every *other* axis in ``axes`` and of the ``fixed`` columns, so a
    group holds models that differ only in axis i. τ-b of measure vs gap is computed inside each group, and ψ_i is
    the plain mean over groups (each group weighs 1, whatever its size: Jiang's 1/m_i), taken within each seed and
    then averaged over seeds (see ``fixed``). Ψ = mean over axes of ψ_i.

    Parameters
    ----------
    df : pandas.DataFrame
        One row per model.
    measure, gap : str
        Columns of the complexity measure and of the generalization gap. Rows where either is NaN are dropped.
    axes : sequence of str
        Columns of the hyperparameters that vary (Θ_1, …, Θ_n). Missing values (NaN) form a level of their own.
    fixed : sequence of str, default ("seed",)
        Columns held fixed inside each group but not themselves an axis: the replicates (seeds). A group is one
        seed's models differing in axis i; ψ_i is computed within each seed (mean over that seed's groups) and
        then averaged over the seeds (each seed weighs 1, whatever its number of groups). With one seed this is
        the plain mean over groups. Columns absent from ``df`` are ignored, so the default works on tables
        without seeds; columns that are also in ``axes`` are axes, not fixed. ``result.fixed`` says which were used.

    Returns
    -------
    GranulatedResult
        ``per_axis[axis]`` holds ψ_i with the numbers of groups used and skipped; ``Psi`` the mean of the finite
        ψ_i and ``n_axes`` how many there were.

    Notes
    -----
    - A group is used when it has ≥ 2 models, ≥ 2 distinct values of axis i and a non-constant gap; otherwise it is
      skipped and counted in ``n_skipped`` (never counted as τ = 0). An incomplete grid (failed runs) thus averages
      over the groups that remain.
    - A used group where the *measure* is constant contributes τ = 0, as Jiang et al.'s τ (τ-a) gives and as their
      tables show for, e.g., #params along the learning-rate axis: the measure saw the axis vary and ranked nothing.
      τ-b is undefined there (0/0); such groups are counted in ``n_constant_measure``.
    - An axis with no usable group has ψ_i = NaN and is left out of Ψ.

    Examples
    --------
    ψ_lr: at bs = 32 the measure agrees with the gap (τ = 1), at bs = 64 it disagrees (τ = −1), so ψ_lr = 0.
    ψ_bs: at lr = 1 and at lr = 2 it agrees, so ψ_bs = 1; Ψ = 0.5.

    >>> df = pd.DataFrame({"lr": [1, 2, 1, 2], "bs": [32, 32, 64, 64],
    ...                    "mu": [1.0, 2.0, 4.0, 3.0], "gap": [0.1, 0.2, 0.3, 0.5]})
    >>> result = granulated_kendall(df, "mu", "gap", axes=["lr", "bs"])
    >>> result.psi, result.Psi
    ({'lr': 0.0, 'bs': 1.0}, 0.5)
    """
    axes = _axes_tuple(axes)
    _require_columns(df, [measure], "measure")
    _require_columns(df, [gap], "gap")
    _require_columns(df, axes, "axis")
    fixed = tuple(c for c in dict.fromkeys(fixed) if c in df.columns and c not in axes)
    table = df.loc[df[measure].notna() & df[gap].notna()]
    rank_mu = dense_ranks(_as_float_vector(table[measure], measure))
    rank_gap = dense_ranks(_as_float_vector(table[gap], gap))
    codes = {c: level_codes(table[c]) for c in (*axes, *fixed)}
    replicate = joint_codes([codes[c] for c in fixed], len(table))  # which seed (fixed-value combination) a row is

    per_axis = {}
    for axis in axes:
        keys = [a for a in axes if a != axis] + list(fixed)
        group = joint_codes([codes[k] for k in keys], len(table))
        counts = _pair_counts(group, rank_mu, rank_gap)
        # groups (present by construction) with >= 2 distinct values of the axis
        _, first_row = np.unique(joint_codes([group, codes[axis]], len(table)), return_index=True)
        varies = np.bincount(group[first_row], minlength=counts.n_pairs.size) >= 2
        used = varies & (counts.tied_y < counts.n_pairs)                # the gap is not constant
        constant_measure = used & (counts.tied_x == counts.n_pairs)
        taus = np.where(constant_measure, 0.0, counts.tau_b())
        psi = float(seed_mean(taus[None, :], used[None, :], _group_replicate(group, replicate))[0])
        per_axis[axis] = AxisPsi(axis, psi, int(used.sum()), int((~used).sum()), int(constant_measure.sum()))

    finite = [r.psi for r in per_axis.values() if np.isfinite(r.psi)]
    Psi = float(np.mean(finite)) if finite else math.nan
    return GranulatedResult(measure, gap, per_axis, Psi, len(finite), fixed)


# ---------------------------------------------------------------------------------------------------------------
# Conditional mutual information (Jiang et al. §4)
# ---------------------------------------------------------------------------------------------------------------

def _pair_codes(values: pd.Series, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """One integer per ordered pair for the tuple (value of the first model, value of the second)."""
    codes = level_codes(values)
    return codes[first] * (int(codes.max(initial=0)) + 1) + codes[second]


def _mi_and_entropy(cell: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float, int]:
    """Î(V_μ; V_g | U) and Ĥ(V_g | U) in nats from the pairs' compact cell codes u and signs a, b ∈ {0, 1}."""
    n_cells = int(cell.max()) + 1
    counts = np.bincount(cell * 4 + a * 2 + b, minlength=4 * n_cells).reshape(n_cells, 2, 2).astype(float)
    # counts: (U, 2, 2) = n(u, a, b), every u seen at least once
    n_total = counts.sum()
    n_u = counts.sum(axis=(1, 2), keepdims=True)                 # (U, 1, 1)
    n_a = counts.sum(axis=2, keepdims=True)                      # (U, 2, 1)
    n_b = counts.sum(axis=1, keepdims=True)                      # (U, 1, 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        # p(u)·p(a,b|u)·log(p(a,b|u)/(p(a|u)p(b|u))) = n_ab/N · log(n_ab·n_u/(n_a·n_b)); empty cells contribute 0
        mi = np.where(counts > 0, counts / n_total * np.log(counts * n_u / (n_a * n_b)), 0.0).sum()
        # p(u)·p(b|u)·log p(b|u) = n_b/N · log(n_b/n_u)
        entropy = -np.where(n_b > 0, n_b / n_total * np.log(n_b / n_u), 0.0).sum()
    return float(mi), float(entropy), n_cells


def conditional_mi_detail(df: pd.DataFrame, measure: str, gap: str, axes: Sequence[str],
                          max_conditioning: int = 2) -> pd.DataFrame:
    """Î(V_μ; V_g | U_S), Ĥ(V_g | U_S) and their ratio for every conditioning set S, |S| ≤ ``max_conditioning``.

    See ``conditional_mi`` for the definitions; the score it returns is the minimum of the ``ratio`` column.

    Returns
    -------
    pandas.DataFrame
        One row per S (the empty set first, then by size, in the order of ``axes``), with columns
        ``conditioning`` (tuple of axis names), ``mi`` and ``entropy`` (nats), ``ratio`` (mi/entropy clipped to
        [0, 1]; NaN where the entropy is 0), ``n_cells`` (values of U_S seen) and ``n_pairs`` (ordered pairs kept).

    Examples
    --------
    >>> df = pd.DataFrame({"lr": [1, 2, 1, 2], "mu": [1.0, 2.0, 3.0, 4.0], "gap": [0.1, 0.2, 0.3, 0.4]})
    >>> conditional_mi_detail(df, "mu", "gap", axes=["lr"])[["conditioning", "ratio", "n_pairs"]]
      conditioning  ratio  n_pairs
    0           ()    1.0       12
    1        (lr,)    1.0       12
    """
    axes = _axes_tuple(axes)
    _require_columns(df, [measure], "measure")
    _require_columns(df, [gap], "gap")
    _require_columns(df, axes, "axis")
    if not isinstance(max_conditioning, (int, np.integer)) or max_conditioning < 0:
        raise ValueError(f"max_conditioning must be a non-negative integer, got {max_conditioning!r}")
    table = df.loc[df[measure].notna() & df[gap].notna()]
    # ranks, not values: the signs are the same, and inf − inf would have none
    mu = dense_ranks(_as_float_vector(table[measure], measure))
    g = dense_ranks(_as_float_vector(table[gap], gap))

    # ordered pairs of distinct models, without self-pairs
    n = len(table)
    first, second = np.divmod(np.arange(n * n), n)
    distinct = first != second
    first, second = first[distinct], second[distinct]
    d_mu, d_g = mu[first] - mu[second], g[first] - g[second]
    # a tie has no sign to agree with, so the pair is dropped rather than counted as ½
    untied = (d_mu != 0) & (d_g != 0)
    first, second = first[untied], second[untied]
    a = (d_mu[untied] > 0).astype(np.int64)  # V_μ = +1 -> 1, −1 -> 0
    b = (d_g[untied] > 0).astype(np.int64)   # V_g = +1 -> 1, −1 -> 0
    codes = {axis: _pair_codes(table[axis], first, second) for axis in axes}

    rows = []
    subsets = (s for size in range(min(max_conditioning, len(axes)) + 1)
               for s in itertools.combinations(axes, size))
    for subset in subsets:
        row = {"conditioning": subset, "mi": math.nan, "entropy": math.nan, "ratio": math.nan,
               "n_cells": 0, "n_pairs": int(first.size)}
        if first.size:
            cell = joint_codes([codes[axis] for axis in subset], first.size)
            mi, entropy, n_cells = _mi_and_entropy(cell, a, b)
            ratio = float(np.clip(mi / entropy, 0.0, 1.0)) if entropy > 0 else math.nan
            row.update(mi=mi, entropy=entropy, ratio=ratio, n_cells=n_cells)
        rows.append(row)
    return pd.DataFrame(rows, columns=["conditioning", "mi", "entropy", "ratio", "n_cells", "n_pairs"])


def conditional_mi(df: pd.DataFrame, measure: str, gap: str, axes: Sequence[str], max_conditioning: int = 2) -> float:
    """Jiang et al.'s conditional mutual-information score K(μ) (§4; measure-formulas §8.10).

    Over ordered pairs of distinct models (θ, θ′), V_μ = sign(μ(θ) − μ(θ′)) and V_g = sign(g(θ) − g(θ′)); U_S is
    the tuple of both models' values of the hyperparameters in S. For every S ⊆ axes with |S| ≤ ``max_conditioning``
    (the empty set included)::

        Î(V_μ; V_g | U_S) = Σ_u p(u) Σ_{a,b} p(a,b|u) log[p(a,b|u) / (p(a|u) p(b|u))]
        Ĥ(V_g | U_S)      = −Σ_u p(u) Σ_b p(b|u) log p(b|u)

    and K(μ) = min over S of Î/Ĥ. Conditioning on a hyperparameter removes the part of the measure-gap agreement
    that that hyperparameter alone explains, so a measure that only tracks, say, the learning rate scores ≈ 0.

    Parameters
    ----------
    df : pandas.DataFrame
        One row per model; rows with a NaN measure or gap are dropped.
    measure, gap : str
        Columns of the complexity measure and of the generalization gap.
    axes : sequence of str
        Hyperparameter columns to condition on. NaN is a value of its own.
    max_conditioning : int, default 2
        Largest |S|; Jiang et al. use 2.

    Returns
    -------
    float
        K(μ) in [0, 1] (PGDL and Jiang et al. report it × 100). NaN when no pair remains or Ĥ = 0 for every S.

    Notes
    -----
    - Self-pairs are excluded; each cell u is weighted by p(u), its share of the pairs.
    - Pairs tied in the measure or in the gap are dropped (a tie has no sign), before any p is estimated; so a
      measure constant on part of the models is scored on the rest. ``conditional_mi_detail`` reports the pairs kept.
    - Sets S with Ĥ(V_g | U_S) = 0 (the gap's order is fixed by S alone) are skipped: the ratio is 0/0 there.
    - O(n²) pairs, vectorised: 150 models × 40 measures × 4 axes (11 sets S each) take about half a second.

    Examples
    --------
    A measure equal to the gap shares all of the gap's information: K = 1.

    >>> df = pd.DataFrame({"lr": [1, 2, 1, 2], "mu": [1.0, 2.0, 3.0, 4.0], "gap": [0.1, 0.2, 0.3, 0.4]})
    >>> conditional_mi(df, "mu", "gap", axes=["lr"])
    1.0
    """
    detail = conditional_mi_detail(df, measure, gap, axes, max_conditioning)
    ratios = detail["ratio"].to_numpy(dtype=float)
    return float(np.nanmin(ratios)) if np.isfinite(ratios).any() else math.nan
