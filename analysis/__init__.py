"""Rank how well complexity measures predict the generalization gap, measure the study's own noise, and report it.

The modules depend one way, each on those above it only:

stats         Kendall τ-b, granulated ψ/Ψ (averaged over seeds), conditional mutual information (pure functions).
bootstrap     the one bootstrap: resamples as multiplicity vectors (configurations, then seeds within them) and
              the fast replicates of every statistic.
selection     which models enter, the candidate hyperparameter axes, configuration codes (seed replicates).
sign_error    Dziugaite et al.'s robust sign-error over environments.
correlations  the long per-width table of τ, ψ, Ψ, CMI and sign-error with intervals, and the paired replicates.
comparisons   paired differences between measures, Holm-corrected.
reliability   the seed share of the gap's variance and the agreement of replicates (gaps, rankings).
shifted_gap   Ψ on the i.i.d. and the shifted gap side by side, and the agreement of the two rankings.
tables        paper-style Kendall tables per width: CSV, Markdown, LaTeX, HTML.
plots         scatters, ψ heatmaps, comparison matrices, layer-wise SRR, training curves (PNG and PDF).
report        one Markdown + HTML page per analysed zoo.
zoo_files     ``read_zoo`` and ``analyze_zoo``: read a zoo directory, write everything beside it.

Files are written through ``zoo.store``'s atomic writes; nothing else of ``zoo``, ``measures`` or ``benchmark``
is imported.
"""
from .bootstrap import bootstrap_ci, draw_multiplicities, percentile_interval
from .comparisons import COMPARISON_COLUMNS, holm_intervals, paired_comparisons
from .correlations import CORRELATION_COLUMNS, Correlations, correlation_table, measure_correlations
from .plots import (PlotResult, plot_comparison_matrix, plot_layerwise_srr, plot_psi_heatmap, plot_scatter,
                    plot_scatter_grid, plot_training_curves, write_plots)
from .reliability import RELIABILITY_COLUMNS, reliability_table
from .report import build_report, render_html, render_markdown, write_report
from .selection import DEFAULT_AXES, select_models
from .shifted_gap import GapComparison, compare_gaps
from .sign_error import environment_sign_errors, summarize_sign_errors
from .stats import (AxisPsi, GranulatedResult, conditional_mi, conditional_mi_detail, granulated_kendall,
                    kendall_tau)
from .tables import kendall_html, kendall_latex, kendall_markdown, kendall_table, write_kendall_tables
from .zoo_files import ZooData, analyze_zoo, read_zoo

__all__ = [
    "kendall_tau", "AxisPsi", "GranulatedResult", "granulated_kendall", "conditional_mi", "conditional_mi_detail",
    "bootstrap_ci", "draw_multiplicities", "percentile_interval",
    "DEFAULT_AXES", "select_models",
    "environment_sign_errors", "summarize_sign_errors",
    "CORRELATION_COLUMNS", "Correlations", "measure_correlations", "correlation_table",
    "COMPARISON_COLUMNS", "holm_intervals", "paired_comparisons",
    "RELIABILITY_COLUMNS", "reliability_table",
    "GapComparison", "compare_gaps",
    "kendall_table", "kendall_markdown", "kendall_latex", "kendall_html", "write_kendall_tables",
    "PlotResult", "plot_scatter", "plot_scatter_grid", "plot_psi_heatmap", "plot_comparison_matrix",
    "plot_layerwise_srr", "plot_training_curves", "write_plots",
    "build_report", "render_markdown", "render_html", "write_report",
    "ZooData", "read_zoo", "analyze_zoo",
]
