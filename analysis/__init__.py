"""Rank how well complexity measures predict the generalization gap, and report it.

stats         Kendall τ-b, granulated ψ/Ψ, conditional mutual information, bootstrap intervals (pure functions).
correlations  the long per-width correlation table of a zoo, and ``analyze_zoo`` (read a zoo, write everything).
tables        paper-style Kendall tables per width: CSV, Markdown, LaTeX, HTML.
plots         scatters, ψ heatmaps, layer-wise SRR, training curves (PNG and PDF).
report        one Markdown + HTML page per analysed zoo.

Reads files only: never imports ``zoo``, ``measures`` or ``benchmark``. The plotting names load matplotlib and
seaborn on first use, so ``import analysis`` stays light for code that only needs the statistics.
"""
import importlib

from .correlations import (CORRELATION_COLUMNS, DEFAULT_AXES, ZooData, analyze_zoo, correlation_table, read_zoo,
                           select_models)
from .stats import (AxisPsi, GranulatedResult, bootstrap_ci, conditional_mi, conditional_mi_detail,
                    granulated_kendall, kendall_tau)
from .tables import kendall_html, kendall_latex, kendall_markdown, kendall_table, write_kendall_tables

__all__ = [
    "kendall_tau", "AxisPsi", "GranulatedResult", "granulated_kendall", "conditional_mi", "conditional_mi_detail",
    "bootstrap_ci",
    "CORRELATION_COLUMNS", "DEFAULT_AXES", "select_models", "correlation_table", "ZooData", "read_zoo",
    "analyze_zoo",
    "kendall_table", "kendall_markdown", "kendall_latex", "kendall_html", "write_kendall_tables",
    "PlotResult", "plot_scatter", "plot_scatter_grid", "plot_psi_heatmap", "plot_layerwise_srr",
    "plot_training_curves", "write_plots",
    "build_report", "render_markdown", "render_html", "write_report",
]

_LAZY = {name: "plots" for name in ("PlotResult", "plot_scatter", "plot_scatter_grid", "plot_psi_heatmap",
                                    "plot_layerwise_srr", "plot_training_curves", "write_plots")}
_LAZY.update({name: "report" for name in ("build_report", "render_markdown", "render_html", "write_report")})


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
