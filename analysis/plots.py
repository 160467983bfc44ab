"""Figures of a zoo's analysis, each saved as PNG and PDF (seaborn on matplotlib's Agg canvas).

- ``scatter_<measure>``: measure vs gap, one panel per width, points coloured by variant, τ and Ψ in the titles.
- ``scatter_grid``: small scatters of SRR and the measures with the largest |Ψ|.
- ``psi_heatmap_width<W>``: ψ per axis (and Ψ, τ) × measure, diverging colours centred at 0.
- ``comparisons_<Psi|tau>_width<W>``: measure × measure matrix of paired differences (row − column), Holm-resolved
  cells marked.
- ``layerwise_srr``: SRR_ℓ against layer, one line per saved epoch, one panel per variant (mean over runs).
- ``training_curves``: train and test cross-entropy per epoch of every run, with the CE target.

Figures are built on ``matplotlib.figure.Figure`` directly, never through pyplot: nothing changes the caller's
backend or global state, and no figure is left open.
"""
from __future__ import annotations

import io
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from zoo.store import atomic_write_bytes

from .selection import select_models
from .tables import kendall_table

__all__ = [
    "GAP_LABELS",
    "PlotResult",
    "measure_filename",
    "save_figure",
    "variant_palette",
    "plot_scatter",
    "plot_scatter_grid",
    "plot_psi_heatmap",
    "plot_comparison_matrix",
    "plot_layerwise_srr",
    "plot_training_curves",
    "write_plots",
]

GAP_LABELS = {
    "gap_loss": "generalization gap: test CE − train CE (nats)",
    "gap_acc": "generalization gap: train acc − test acc",
    "gap_shift": "shifted gap: CE on the shifted test set − train CE (nats)",
}
_STYLE = {"axes.titlesize": 10, "axes.labelsize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8,
          "legend.fontsize": 8, "legend.title_fontsize": 8}
_WIDTH_MARKERS = ["o", "s", "^", "D", "v", "P", "X"]
_GRID_SIZE = 12


@dataclass
class PlotResult:
    """What ``write_plots`` made: files by plot name, and the plots it skipped with the reason."""
    files: dict[str, list[Path]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def paths(self) -> list[Path]:
        return [p for paths in self.files.values() for p in paths]


def measure_filename(measure: str) -> str:
    """A file-name-safe form of a measure name: 'log-prod-of-spec/margin' -> 'log-prod-of-spec-over-margin'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(measure).replace("/", "-over-"))


def save_figure(fig: Figure, base: str | Path) -> list[Path]:
    """Save ``fig`` as ``base.png`` (150 dpi) and ``base.pdf``, each written atomically (``zoo.store``)."""
    base = Path(base)
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = base.parent / f"{base.name}.{ext}"
        buffer = io.BytesIO()
        fig.savefig(buffer, format=ext, dpi=150)  # constrained layout already fits legends and labels
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths


def variant_palette(variants) -> dict[str, tuple]:
    """One colour per variant, the same in every figure (sorted names -> tab10, whose first six are far apart)."""
    names = sorted({str(v) for v in variants})
    colours = sns.color_palette("tab10", max(len(names), 1))
    return {name: colours[i % len(colours)] for i, name in enumerate(names)}


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _fmt(value) -> str:
    if value is None or not np.isfinite(value):
        return "–"
    return f"{value + 0.0:.2f}".replace("-0.00", "0.00")


def _use_log(values: np.ndarray) -> bool:
    """Log axis for positive values spanning more than two decades (norm products, PAC-Bayes bounds)."""
    finite = values[np.isfinite(values)]
    return finite.size > 1 and finite.min() > 0 and finite.max() / finite.min() > 100


def _statistic(correlations: pd.DataFrame, measure: str, width, statistic: str) -> float:
    rows = correlations.loc[(correlations["measure"] == measure) & (correlations["width"] == width)
                            & (correlations["statistic"] == statistic), "value"]
    return float(rows.iloc[0]) if len(rows) else math.nan


def _with_style():
    return sns.axes_style("whitegrid", {"grid.linestyle": ":"})


# ---------------------------------------------------------------------------------------------------------------
# Measure vs gap
# ---------------------------------------------------------------------------------------------------------------

def plot_scatter(models: pd.DataFrame, measure: str, gap: str, correlations: pd.DataFrame,
                 palette: dict | None = None, family: str = "") -> Figure:
    """Measure (x) vs gap (y), one panel per width, points coloured by variant; τ, Ψ and n in each title.

    ``models`` holds the analysed models with the measure as a column.
    """
    palette = palette or variant_palette(models["variant"])
    widths = sorted(models["width"].dropna().unique().tolist())
    data = models.loc[np.isfinite(models[measure].astype(float)) & models[gap].notna()]
    with _with_style(), sns.plotting_context("notebook", rc=_STYLE):
        fig = _figure(3.6 * max(len(widths), 1) + 1.4, 3.4)
        axes = fig.subplots(1, max(len(widths), 1), sharey=True, squeeze=False)[0]
        for i, (ax, width) in enumerate(zip(axes, widths)):
            subset = data.loc[data["width"] == width]
            if subset.empty:
                ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
            else:
                sns.scatterplot(data=subset, x=measure, y=gap, hue="variant", hue_order=list(palette),
                                palette=palette, s=28, alpha=0.85, edgecolor="none", ax=ax,
                                legend=(i == len(widths) - 1))
            tau = _statistic(correlations, measure, width, "tau")
            psi = _statistic(correlations, measure, width, "Psi")
            ax.set_title(f"width {width}: τ = {_fmt(tau)}, Ψ = {_fmt(psi)} (n = {len(subset)})")
            log = _use_log(subset[measure].to_numpy(dtype=float))
            if log:
                ax.set_xscale("log")
            ax.set_xlabel(f"{measure}" + (" (log scale)" if log else ""))
            ax.set_ylabel(GAP_LABELS.get(gap, gap) if i == 0 else "")
        if widths and axes[-1].get_legend() is not None:
            sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1.02, 1), title="variant", frameon=False)
        suffix = f" [{family}]" if family else ""
        fig.suptitle(f"{measure}{suffix} vs generalization gap", fontsize=11)
    return fig


def _top_measures(correlations: pd.DataFrame, k: int = _GRID_SIZE) -> list[str]:
    """'srr' first when present, then the measures with the largest mean |Ψ| over widths."""
    psi = correlations.loc[correlations["statistic"] == "Psi"]
    strength = psi.assign(abs_psi=psi["value"].abs()).groupby("measure", sort=False)["abs_psi"].mean()
    order = strength.sort_values(ascending=False, na_position="last", kind="stable").index.tolist()
    first = [m for m in ("srr",) if m in order]
    return (first + [m for m in order if m not in first])[:k]


def plot_scatter_grid(models: pd.DataFrame, measures: list[str], gap: str, correlations: pd.DataFrame,
                      palette: dict | None = None) -> Figure:
    """Small scatters of several measures vs gap: colour = variant, marker = width; τ per width in the titles."""
    palette = palette or variant_palette(models["variant"])
    widths = sorted(models["width"].dropna().unique().tolist())
    markers = {w: _WIDTH_MARKERS[i % len(_WIDTH_MARKERS)] for i, w in enumerate(widths)}
    ncols = min(4, max(len(measures), 1))
    nrows = math.ceil(len(measures) / ncols) if measures else 1
    with _with_style(), sns.plotting_context("notebook", rc={**_STYLE, "axes.titlesize": 9}):
        fig = _figure(3.0 * ncols + 1.6, 2.6 * nrows + 0.6)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, measure in zip(axes, measures):
            data = models.loc[np.isfinite(models[measure].astype(float)) & models[gap].notna()]
            for width in widths:
                subset = data.loc[data["width"] == width]
                ax.scatter(subset[measure], subset[gap], c=[palette[str(v)] for v in subset["variant"]],
                           marker=markers[width], s=14, alpha=0.8, linewidths=0)
            if _use_log(data[measure].to_numpy(dtype=float)):
                ax.set_xscale("log")
            taus = [_fmt(_statistic(correlations, measure, w, "tau")) for w in widths]
            if len(widths) > 1:
                taus = [f"{tau} (w{w})" for tau, w in zip(taus, widths)]
            ax.set_title(f"{measure}\nτ = {'  '.join(taus)}")
            ax.set_xlabel(measure)
            ax.set_ylabel("gap")
        for ax in axes[len(measures):]:
            ax.set_visible(False)
        handles = [Line2D([], [], marker="o", linestyle="", color=c, label=v) for v, c in palette.items()]
        if len(widths) > 1:
            handles += [Line2D([], [], marker=markers[w], linestyle="", color="0.3", label=f"width {w}")
                        for w in widths]
        fig.legend(handles=handles, loc="outside right upper", frameon=False,
                   title="variant / width" if len(widths) > 1 else "variant")
        fig.suptitle(f"Top measures vs {GAP_LABELS.get(gap, gap)}", fontsize=11)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Granulated ψ heatmap
# ---------------------------------------------------------------------------------------------------------------

def plot_psi_heatmap(table: pd.DataFrame) -> Figure:
    """ψ per axis, Ψ and τ (columns) × measure (rows, in the table's Ψ order), from ``tables.kendall_table``."""
    axes = table.attrs.get("axes", [])
    columns = {f"psi_{a}": f"ψ {a}" for a in axes} | {"Psi": "Ψ (mean ψ)", "tau": "τ (all models)"}
    # rounded first so that −0.004 is annotated 0.00, not −0.00 (−0.0 + 0.0 is +0.0)
    matrix = table.set_index("measure")[list(columns)].rename(columns=columns).astype(float).round(2) + 0.0
    height = max(4.0, 0.3 * len(matrix) + 2.0)
    with sns.plotting_context("notebook", rc=_STYLE):
        fig = _figure(1.0 * len(columns) + 4.0, height)
        ax = fig.subplots()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PendingDeprecationWarning)  # seaborn's own cmap.set_bad call
            sns.heatmap(matrix, ax=ax, cmap="RdBu_r", center=0, vmin=-1, vmax=1, annot=True, fmt=".2f",
                        annot_kws={"fontsize": 7}, linewidths=0.5, linecolor="white",
                        cbar_kws={"label": "rank correlation with the gap", "shrink": 0.8})
        ax.axvline(len(axes), color="black", linewidth=1.5)
        for label, srr in zip(ax.get_yticklabels(), table["is_srr"]):
            if srr:
                label.set_fontweight("bold")
        ax.set_xlabel("granulated axis")
        ax.set_ylabel("measure (SRR in bold), sorted by Ψ")
        ax.set_title(f"Granulated Kendall ψ per axis, width {table.attrs.get('width', '')}\n"
                     "(+: larger measure goes with larger gap)")
        ax.tick_params(axis="x", rotation=30)
        ax.tick_params(axis="y", rotation=0)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Paired comparisons
# ---------------------------------------------------------------------------------------------------------------

def plot_comparison_matrix(comparisons: pd.DataFrame, width, statistic: str, order: list[str],
                           srr: set[str] = frozenset()) -> Figure:
    """Measures × measures coloured by diff = value(row) − value(column) of ``statistic``; a dot marks the pairs
    whose Holm-corrected interval excludes 0. ``order``: the measures, e.g. sorted by Ψ."""
    rows = comparisons.loc[(comparisons["width"] == width) & (comparisons["statistic"] == statistic)]
    names = [m for m in order if m in set(rows["measure_a"]) | set(rows["measure_b"])]
    index = {m: i for i, m in enumerate(names)}
    diff = np.full((len(names), len(names)), np.nan)
    resolved = np.zeros_like(diff, dtype=bool)
    for a, b, d, r in zip(rows["measure_a"], rows["measure_b"], rows["diff"], rows["resolved"]):
        i, j = index[a], index[b]
        diff[i, j], diff[j, i] = d, -d
        resolved[i, j] = resolved[j, i] = bool(r)
    limit = max(float(np.nanmax(np.abs(diff))) if np.isfinite(diff).any() else 1.0, 1e-9)
    size = max(5.0, 0.22 * len(names) + 3.0)
    symbol = {"Psi": "Ψ", "tau": "τ"}.get(statistic, statistic)
    with sns.plotting_context("notebook", rc=_STYLE):
        fig = _figure(size + 1.5, size)
        ax = fig.subplots()
        image = ax.imshow(diff, cmap="RdBu_r", vmin=-limit, vmax=limit)
        fig.colorbar(image, ax=ax, shrink=0.8, label=f"{symbol}(row) − {symbol}(column)")
        ys, xs = np.nonzero(resolved)
        ax.scatter(xs, ys, s=6, c="black", marker="o", label="resolved (Holm)")
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
        ax.set_yticks(range(len(names)), names, fontsize=6)
        for label in (*ax.get_xticklabels(), *ax.get_yticklabels()):
            if label.get_text() in srr:
                label.set_fontweight("bold")
        ax.set_title(f"Paired differences of {symbol}, width {width} (• = interval excludes 0 after Holm)")
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Layer-wise SRR and training curves
# ---------------------------------------------------------------------------------------------------------------

def plot_layerwise_srr(layerwise: pd.DataFrame, widths: dict | None = None) -> Figure:
    """SRR_ℓ against layer, one line per checkpoint (colour = training progress), one panel per variant and one
    row per width (``widths``: run_id -> width), mean over runs. Each run's last checkpoint is labelled "final"
    (runs stop at different epochs under the CE-target rule)."""
    required = ["run_id", "variant", "epoch", "layer", "srr"]
    missing = [c for c in required if c not in layerwise.columns]
    if missing:
        raise KeyError(f"layerwise table lacks column(s) {missing}; it has {list(layerwise.columns)}")
    last = layerwise.groupby("run_id")["epoch"].transform("max")
    table = layerwise.assign(
        width=layerwise["run_id"].map(widths or {}).fillna("all"),
        checkpoint=np.where(layerwise["epoch"] == last, "final",
                            layerwise["epoch"].map(lambda e: "init" if e == 0 else f"epoch {e:g}")))
    order = (table.loc[table["checkpoint"] != "final"].sort_values("epoch")["checkpoint"].drop_duplicates().tolist()
             + ["final"])
    means = table.groupby(["width", "variant", "checkpoint", "layer"], as_index=False)["srr"].mean()
    runs = table.groupby(["width", "variant"])["run_id"].nunique()
    variants = sorted(means["variant"].astype(str).unique())
    widths_present = sorted(means["width"].unique(), key=str)
    colours = dict(zip(order, sns.color_palette("viridis", len(order))))
    with _with_style(), sns.plotting_context("notebook", rc=_STYLE):
        fig = _figure(3.2 * len(variants) + 1.4, 2.8 * len(widths_present) + 0.5)
        axes = fig.subplots(len(widths_present), len(variants), squeeze=False)
        for row, width in zip(axes, widths_present):
            for ax, variant in zip(row, variants):
                for checkpoint in order:
                    line = means.loc[(means["width"] == width) & (means["variant"].astype(str) == variant)
                                     & (means["checkpoint"] == checkpoint)]
                    ax.plot(line["layer"], line["srr"], marker="o", markersize=3, color=colours[checkpoint])
                ax.set_title(f"{variant}, width {width} ({runs.get((width, variant), 0)} runs)", fontsize=9)
                ax.set_xlabel("layer ℓ")
                ax.xaxis.get_major_locator().set_params(integer=True)
            row[0].set_ylabel("SRR_ℓ (mean over runs)")
        handles = [Line2D([], [], color=colours[c], marker="o", markersize=3, label=c) for c in order]
        fig.legend(handles=handles, loc="outside right upper", frameon=False, title="checkpoint")
        fig.suptitle("Layer-wise sparse rate reduction ‖Z‖₀ + R^c − R over training", fontsize=11)
    return fig


def plot_training_curves(logs: pd.DataFrame, variants: dict[str, str], target_ce: float | None = None,
                         palette: dict | None = None) -> Figure:
    """Train and test cross-entropy per epoch, one thin line per run coloured by variant, log y-axis.

    ``logs``: stacked ``log.csv`` rows with a ``run_id`` column; ``variants``: run_id -> variant.
    """
    logs = logs.assign(variant=logs["run_id"].map(variants).fillna("unknown").astype(str))
    palette = palette or variant_palette(logs["variant"])
    palette = {**palette, **{v: (0.5, 0.5, 0.5) for v in logs["variant"].unique() if v not in palette}}
    with _with_style(), sns.plotting_context("notebook", rc=_STYLE):
        fig = _figure(9.5, 3.6)
        axes = fig.subplots(1, 2, sharey=True)
        for ax, column, name in zip(axes, ("train_loss", "test_loss"), ("train", "test")):
            for run_id, run in logs.groupby("run_id", sort=True):
                values = run[column].astype(float)
                kept = np.isfinite(values) & (values > 0)   # epochs the trainer did not evaluate are NaN in log.csv
                ax.plot(run["epoch"][kept], values[kept], color=palette[run["variant"].iloc[0]], linewidth=0.8,
                        alpha=0.6)
            ax.set_yscale("log")
            ax.set_xlabel("epoch")
            ax.set_title(f"{name} cross-entropy per epoch")
            ax.xaxis.get_major_locator().set_params(integer=True)
        axes[0].set_ylabel("cross-entropy (nats, log scale)")
        if target_ce is not None:
            axes[0].axhline(target_ce, color="black", linestyle="--", linewidth=1)
        handles = [Line2D([], [], color=palette[v], label=v) for v in sorted(logs["variant"].unique())]
        if target_ce is not None:
            handles.append(Line2D([], [], color="black", linestyle="--", label=f"target train CE = {target_ce:g}"))
        fig.legend(handles=handles, loc="outside right upper", frameon=False, title="variant")
        fig.suptitle(f"Training curves ({logs['run_id'].nunique()} runs)", fontsize=11)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# All of a zoo's figures
# ---------------------------------------------------------------------------------------------------------------

_OUR_FILES = re.compile(r"^(scatter_.+|psi_heatmap_width.+|comparisons_.+|layerwise_srr|training_curves)"
                        r"\.(png|pdf)$")


def write_plots(data, correlations: pd.DataFrame, out_dir: str | Path, gap: str = "gap_loss",
                tables: dict | None = None, comparisons: pd.DataFrame | None = None) -> PlotResult:
    """Write every figure of a zoo's analysis into ``out_dir``; skip (with a reason) those whose input is missing.

    Parameters
    ----------
    data : analysis.zoo_files.ZooData
        The zoo's inputs (``read_zoo``).
    correlations : pandas.DataFrame
        ``correlation_table``'s long table; its ``attrs["settings"]`` says which models were analysed.
    out_dir : str or Path
        Folder of the figures; files of an earlier run that this one did not make are removed.
    gap : str
        Gap column plotted on the y-axes.
    tables : dict, optional
        ``tables.kendall_table`` frames by width, for the heatmaps (made here when not given).
    comparisons : pandas.DataFrame, optional
        ``comparisons.paired_comparisons``' table, for the comparison matrices.
    """
    out_dir = Path(out_dir)
    result = PlotResult()
    settings = correlations.attrs.get("settings", {})
    models, _ = select_models(data.models, settings.get("include_unreached", False))
    measure_names = list(dict.fromkeys(correlations["measure"]))
    values = data.measures.set_index("run_id")[measure_names].apply(pd.to_numeric, errors="coerce")
    # a measure named like a models.csv column is plotted with the measure's values
    models = models.drop(columns=[m for m in measure_names if m in models.columns]).join(values, on="run_id")
    models["variant"] = models["variant"].astype(str)
    palette = variant_palette(data.models["variant"].astype(str))
    families = {}
    if data.info is not None and {"measure", "family"} <= set(data.info.columns):
        families = dict(zip(data.info["measure"].astype(str), data.info["family"].astype(str)))

    srr_first = sorted(measure_names, key=lambda m: (families.get(m, "") != "srr", m != "srr"))
    for measure in srr_first:
        fig = plot_scatter(models, measure, gap, correlations, palette, families.get(measure, ""))
        result.files[f"scatter_{measure}"] = save_figure(fig, out_dir / f"scatter_{measure_filename(measure)}")
    if measure_names:
        fig = plot_scatter_grid(models, _top_measures(correlations), gap, correlations, palette)
        result.files["scatter_grid"] = save_figure(fig, out_dir / "scatter_grid")

    widths = sorted(correlations["width"].dropna().unique().tolist())
    for width in widths:
        table = (tables or {}).get(width)
        table = table if table is not None else kendall_table(correlations, width, data.info)
        if table.attrs.get("axes"):
            fig = plot_psi_heatmap(table)
            result.files[f"psi_heatmap_width{width}"] = save_figure(fig, out_dir / f"psi_heatmap_width{width}")
        else:
            result.skipped[f"psi_heatmap_width{width}"] = f"no hyperparameter varies at width {width}"

    srr = {m for m, f in families.items() if f == "srr"}
    if comparisons is not None:
        for (width, statistic), _ in comparisons.groupby(["width", "statistic"], sort=True):
            table = (tables or {}).get(width)
            order = list(table["measure"]) if table is not None else measure_names
            name = f"comparisons_{statistic}_width{width}"
            result.files[name] = save_figure(plot_comparison_matrix(comparisons, width, statistic, order, srr),
                                             out_dir / name)

    if data.layerwise is None or data.layerwise.empty:
        result.skipped["layerwise_srr"] = "no layerwise.csv in the zoo directory"
    elif not {"run_id", "variant", "epoch", "layer", "srr"} <= set(data.layerwise.columns):
        result.skipped["layerwise_srr"] = "layerwise.csv lacks one of run_id, variant, epoch, layer, srr"
    else:
        result.files["layerwise_srr"] = save_figure(plot_layerwise_srr(
            data.layerwise, dict(zip(data.models["run_id"], data.models["width"]))), out_dir / "layerwise_srr")

    logs = data.logs
    if logs is None or logs.empty:
        result.skipped["training_curves"] = "no runs/*/log.csv in the zoo directory"
    elif not {"epoch", "train_loss", "test_loss"} <= set(logs.columns):
        result.skipped["training_curves"] = "the runs' log.csv lack epoch, train_loss or test_loss"
    else:
        variants = dict(zip(data.models["run_id"].astype(str), data.models["variant"].astype(str)))
        fig = plot_training_curves(logs, variants, data.target_ce, palette)
        result.files["training_curves"] = save_figure(fig, out_dir / "training_curves")

    written = {p.name for p in result.paths}
    for old in out_dir.glob("*"):
        if old.is_file() and _OUR_FILES.match(old.name) and old.name not in written:
            old.unlink()
    return result
