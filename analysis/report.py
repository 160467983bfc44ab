"""One page per analysed zoo, as Markdown and as self-contained HTML (inline CSS, images by relative path).

The page is built once as a list of blocks (heading, paragraph, list, table, image, code) and rendered twice, so
the two files always say the same thing and no Markdown converter is needed.
"""
from __future__ import annotations

import datetime as _dt
import html
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from zoo.store import atomic_write_text

from .plots import GAP_LABELS, PlotResult, measure_filename
from .selection import select_models
from .shifted_gap import GAP_PAIR, IID_GAP, SHIFTED_GAP, GapComparison
from .tables import kendall_caption, kendall_html, kendall_markdown

__all__ = ["build_report", "render_markdown", "render_html", "write_report"]


# ---------------------------------------------------------------------------------------------------------------
# Blocks and their two renderings
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str  # may hold `code` and **bold**


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numeric: tuple[bool, ...] = ()  # right-align these columns


@dataclass(frozen=True)
class Prerendered:
    markdown: str
    html: str


@dataclass(frozen=True)
class Image:
    path: str  # relative to the report
    alt: str


@dataclass(frozen=True)
class Code:
    text: str
    language: str = ""


def _inline_html(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', text)


def _md_cell(text: str) -> str:
    return str(text).replace("|", r"\|").replace("\n", " ")


def render_markdown(blocks: list) -> str:
    """The blocks as GitHub Markdown."""
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append("#" * block.level + " " + block.text)
        elif isinstance(block, Paragraph):
            parts.append(block.text)
        elif isinstance(block, Bullets):
            parts.append("\n".join(f"- {item}" for item in block.items))
        elif isinstance(block, Table):
            align = block.numeric or (False,) * len(block.header)
            lines = ["| " + " | ".join(_md_cell(h) for h in block.header) + " |",
                     "|" + "|".join("---:" if a else ":---" for a in align) + "|"]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            parts.append("\n".join(lines))
        elif isinstance(block, Prerendered):
            parts.append(block.markdown.rstrip("\n"))
        elif isinstance(block, Image):
            parts.append(f"![{block.alt}]({block.path})")
        elif isinstance(block, Code):
            longest = max((len(m) for m in re.findall(r"`+", block.text)), default=0)
            fence = "`" * max(3, longest + 1)
            parts.append(f"{fence}{block.language}\n{block.text.rstrip(chr(10))}\n{fence}")
        else:
            raise TypeError(f"unknown block {block!r}")
    return "\n\n".join(parts) + "\n"


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 1150px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #bbb; padding-bottom: .15em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.88em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.srr { background: #fff6d9; }
tr:nth-child(even):not(.srr) { background: #fafafa; }
pre { background: #f6f8fa; border: 1px solid #ddd; padding: .8em; overflow-x: auto; font-size: 0.85em; }
code { background: #f3f3f3; padding: 0 3px; }
img { max-width: 100%; border: 1px solid #eee; margin: .5em 0; }
"""


def render_html(blocks: list, title: str) -> str:
    """The blocks as one self-contained HTML page (inline CSS; images by relative path)."""
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            parts.append(f"<p>{_inline_html(block.text)}</p>")
        elif isinstance(block, Bullets):
            parts.append("<ul>\n" + "\n".join(f"<li>{_inline_html(i)}</li>" for i in block.items) + "\n</ul>")
        elif isinstance(block, Table):
            numeric = block.numeric or (False,) * len(block.header)
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
            rows = "\n".join("<tr>" + "".join(f'<td class="{"num" if n else "text"}">{html.escape(str(c))}</td>'
                                              for c, n in zip(row, numeric)) + "</tr>" for row in block.rows)
            parts.append(f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>")
        elif isinstance(block, Prerendered):
            parts.append(block.html.rstrip("\n"))
        elif isinstance(block, Image):
            parts.append(f'<p><a href="{html.escape(block.path)}"><img src="{html.escape(block.path)}" '
                         f'alt="{html.escape(block.alt)}"></a></p>')
        elif isinstance(block, Code):
            parts.append(f"<pre><code>{html.escape(block.text.rstrip(chr(10)))}</code></pre>")
        else:
            raise TypeError(f"unknown block {block!r}")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(parts) + "\n</body>\n</html>\n")


# ---------------------------------------------------------------------------------------------------------------
# The report's content
# ---------------------------------------------------------------------------------------------------------------

_HOW_TO_READ = (
    "**Sign convention.** Every number is a rank correlation between a measure's raw value and the "
    "generalization gap: positive means models with a larger measure have a larger gap, which is what a complexity "
    "measure should do when `Expected` is +. A measure whose registry direction is − (larger = simpler) should "
    "come out negative; values are never flipped.",
    "**τ** is Kendall's τ-b over all analysed models of one width: it rewards any agreement, including one that a "
    "single hyperparameter (say the learning rate) causes alone.",
    "**ψ (per axis)** is Jiang et al.'s granulated Kendall coefficient: τ inside groups of models that differ only "
    "in that hyperparameter (every other varied hyperparameter and the seed held fixed), averaged over the groups "
    "of each seed and then over seeds. "
    "Only axes that vary within the width are granulated. **Ψ** is the mean of the ψ's: it asks whether the "
    "measure tracks the gap when each hyperparameter changes on its own.",
    "**CMI** is Jiang et al.'s conditional mutual information score: the information the measure's ordering of a "
    "pair of models carries about their gap ordering, conditioned on up to two hyperparameters, minimised over the "
    "conditioning sets and divided by the gap's entropy. 0 = nothing beyond what the hyperparameters explain, "
    "1 = the gap's order entirely; it has no sign.",
    "**Sign-error** (SE) is Dziugaite et al.'s robust sign-error: for every pair of configurations differing in "
    "one hyperparameter (an environment), the probability over one seed of each that the measure orders their gaps "
    "wrongly (ties ½); SE mean and SE max summarise it over environments. 0 is perfect, 0.5 is chance.",
    "**Intervals** in brackets are 95% percentile bootstrap intervals. With several seeds per configuration the "
    "bootstrap is hierarchical (configurations with replacement, then seeds within each), so the intervals hold the "
    "training noise; with one seed it resamples models. An interval that holds 0 means the data cannot tell the "
    "sign.",
    "**Filtering.** By default only runs that finished and reached the training cross-entropy target enter "
    "(Jiang et al.'s protocol: models are compared at the same training loss); the counts below say how many were "
    "left out and why.",
)


def _number(value, digits: int = 3) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _counts_text(counts: dict) -> str:
    return ", ".join(f"{str(key).replace('_', ' ')}: {value}" for key, value in counts.items())


def _summary_blocks(data, correlations: pd.DataFrame, gap: str) -> list:
    counts = correlations.attrs.get("counts", {})
    settings = correlations.attrs.get("settings", {})
    include_unreached = settings.get("include_unreached", False)
    by_status = counts.get("by_status", {})
    excluded = {k: v for k, v in counts.get("excluded", {}).items() if v}
    target = "the target" if data.target_ce is None else f"{data.target_ce:g}"
    items = [
        f"Models in the zoo: **{counts.get('total', len(data.models))}** "
        f"({', '.join(f'{s}: {n}' for s, n in by_status.items()) or 'none'}).",
        f"Finished runs that reached the CE target (train CE ≤ {target}): **{counts.get('reached_target', 0)}**.",
        f"Excluded from the analysis: **{sum(excluded.values())}**"
        + (f" ({_counts_text(excluded)})." if excluded else ".")
        + ("" if not include_unreached else " Runs that missed the target are included (include_unreached)."),
        f"Analysed: **{counts.get('used', 0)}** models"
        + "".join(f"; width {w}: {n}" for w, n in counts.get("used_by_width", {}).items()) + ".",
        f"Measures: **{len([c for c in data.measures.columns if c != 'run_id'])}**; gap: `{gap}` "
        f"({GAP_LABELS.get(gap, gap)}).",
        f"Bootstrap: {settings.get('n_boot', '?')} resamples (CMI: {settings.get('n_boot_cmi', '?')}), "
        f"seed {settings.get('seed', '?')}, resampling "
        + ("; ".join(f"width {w}: {how}" for w, how in settings.get("bootstrap", {}).items()) or "nothing")
        + "; varied axes: "
        + ("; ".join(f"width {w}: {', '.join(a) or 'none'}" for w, a in settings.get("varied_axes", {}).items())
           or "none") + ".",
    ]
    if not counts.get("used", 0):
        items.append("**Nothing to correlate**: no run passed the filter (finished"
                     + ("" if include_unreached else " and reached the CE target") + ")."
                     + ("" if include_unreached else " To rank the runs that stopped at max_epochs anyway, rerun "
                        "the analysis with include_unreached (e.g. `srrbench analyze --include-unreached`)."))
    used, _ = select_models(data.models, include_unreached)
    rows = []
    for width in sorted(used["width"].dropna().unique().tolist()):
        values = pd.to_numeric(used.loc[used["width"] == width, gap], errors="coerce").dropna()
        rows.append((str(width), str(len(values)), _number(values.min()), _number(values.median()),
                     _number(values.max())))
    blocks = [Heading(2, "Zoo summary"), Bullets(tuple(items))]
    if rows:
        blocks += [Paragraph(f"Spread of the gap (`{gap}`) over the analysed models, per width:"),
                   Table(("width", "models", "min", "median", "max"), tuple(rows), (False, True, True, True, True))]
    return blocks


def _reliability_blocks(reliability: pd.DataFrame | None, settings: dict) -> list:
    blocks = [Heading(2, "Reliability of this study")]
    if reliability is None or reliability.empty:
        return blocks + [Paragraph("Every configuration was trained with one seed, so this run cannot measure its own "
                                   "noise. Give the profile several seeds (e.g. `seed = [0, 1, 2]`) to get the seed "
                                   "share of the gap's variance and the agreement of the rankings between seeds.")]
    rows = tuple((str(r["width"]), str(r["n_models"]), str(r["n_configurations"]), str(r["n_seeds"]),
                  _number(r["seed_share"], 2), _number(r["gap_tau"], 2), _number(r["ranking_tau_Psi"], 2),
                  _number(r["ranking_tau_tau"], 2)) for r in reliability.to_dict("records"))
    blocks += [
        Paragraph("How much of what this study measures is training noise. **Seed share**: within-configuration "
                  "variance of the gap over its total variance (0 = seeds do not move the gap, 1 = only seeds do). "
                  "**Gap τ**: Kendall τ between two seeds' gaps over the same configurations. **Ranking agreement**: "
                  "Kendall τ between the measures' Ψ (resp. τ) computed on one seed's models and on another's. All "
                  "averaged over pairs of seeds; file `reliability.csv`."),
        Table(("width", "models", "configurations", "seeds", "seed share", "gap τ between seeds",
               "ranking agreement (Ψ)", "ranking agreement (τ)"), rows, (False,) + (True,) * 7),
        Paragraph("Bootstrap: " + "; ".join(f"width {w}: {how}" for w, how in settings.get("bootstrap", {}).items())
                  + "."),
    ]
    per_axis = [c for c in reliability.columns if c.startswith("ranking_tau_psi_")]
    if per_axis:
        blocks.append(Paragraph(
            "Ranking agreement of each axis's ψ alone (which hyperparameters move the gap beyond seed noise; Ψ "
            "averages them, so one noisy axis makes it irreproducible): " + "; ".join(
                f"width {r['width']}: " + ", ".join(f"{c.removeprefix('ranking_tau_psi_')} "
                                                    f"{_number(r[c], 2)}" for c in per_axis)
                for r in reliability.to_dict("records")) + "."))
    return blocks


def _comparison_text(rows: pd.DataFrame, statistic: str) -> str:
    row = rows.iloc[0]
    sign = -1.0 if row["swapped"] else 1.0
    low, high = sorted((sign * row["ci_low"], sign * row["ci_high"]))
    symbol = {"Psi": "Ψ", "tau": "τ"}[statistic]
    verdict = "**resolved**" if row["resolved"] else "not resolved"
    diff, low, high = (round(v, 3) + 0.0 for v in (sign * row["diff"], low, high))  # no "-0.000"
    return f"Δ{symbol} = {diff:+.3f} [{low:+.3f}, {high:+.3f}] {verdict}"


def _comparison_blocks(comparisons: pd.DataFrame | None, data, plot_result: PlotResult, level: float) -> list:
    blocks = [Heading(2, "Paired comparisons")]
    if comparisons is None or comparisons.empty:
        return blocks + [Paragraph("Fewer than two measures with a value: nothing to compare.")]
    blocks.append(Paragraph(
        f"Whether measure A beats measure B is a paired question on the same models: Ψ(A) − Ψ(B) and τ(A) − τ(B) are "
        f"bootstrapped on the same resamples for every pair. Intervals are normal ones with the bootstrap standard "
        f"error, corrected for the multiple comparisons of one width and statistic by Holm's step-down method "
        f"(family-wise level {level:.0%}); **resolved** = the corrected interval excludes 0. File: "
        f"`comparisons.csv`."))
    counts = comparisons.groupby(["width", "statistic"])["resolved"].agg(["sum", "size"])
    blocks.append(Bullets(tuple(f"width {w}, {s}: {int(r['sum'])} of {int(r['size'])} pairs resolved"
                                for (w, s), r in counts.iterrows())))
    families = {}
    if data.info is not None and {"measure", "family"} <= set(data.info.columns):
        families = dict(zip(data.info["measure"].astype(str), data.info["family"].astype(str)))
    rivals = [m for m, f in families.items() if f in ("path-norm", "sharpness")]
    present = set(comparisons["measure_a"]) | set(comparisons["measure_b"])
    blocks.append(Heading(3, "The paper's question: SRR against path-norm and the sharpness measures"))
    if "srr" not in present or not any(m in present for m in rivals):
        blocks.append(Paragraph("Not answerable here: `srr` or the path-norm and sharpness measures are missing."))
    else:
        items = []
        for width in sorted(comparisons["width"].unique().tolist()):
            at = comparisons.loc[comparisons["width"] == width]
            for rival in (m for m in rivals if m in present):
                parts = []
                for statistic in ("Psi", "tau"):
                    pair = at.loc[(at["statistic"] == statistic)
                                  & (((at["measure_a"] == "srr") & (at["measure_b"] == rival))
                                     | ((at["measure_a"] == rival) & (at["measure_b"] == "srr")))]
                    if len(pair):
                        parts.append(_comparison_text(pair.assign(swapped=pair["measure_a"] != "srr"), statistic))
                if parts:
                    items.append(f"width {width}: srr − {rival}: " + "; ".join(parts))
        blocks.append(Bullets(tuple(items)))
    for name, paths in plot_result.files.items():
        if name.startswith("comparisons_"):
            png = [p for p in paths if p.suffix == ".png"]
            if png:
                blocks.append(Image(f"plots/{png[0].name}", name.replace("_", " ")))
    return blocks


# How the report words the agreement of the two rankings (Kendall τ between them); the seed agreement beside it is
# the yardstick that tells a change from noise.
_RANKING_WORDS = ((0.8, "the ranking stays largely the same (τ ≥ 0.8)"),
                  (0.5, "the ranking changes in part (0.5 ≤ τ < 0.8)"),
                  (-np.inf, "the ranking changes substantially (τ < 0.5)"))
TOP_MEASURES = 10


def _psi_cell(row: dict, gap: str) -> str:
    return (f"{_number(row[f'Psi_{gap}'], 2)} [{_number(row[f'ci_low_{gap}'], 2)}, "
            f"{_number(row[f'ci_high_{gap}'], 2)}]")


def _rank_cell(value) -> str:
    return "–" if value is None or not np.isfinite(value) else str(int(value))


def _shifted_gap_blocks(gaps: GapComparison | None, data, gap: str, reliability: pd.DataFrame | None,
                        include_unreached: bool) -> list:
    blocks = [Heading(2, "I.i.d. and shifted gap side by side")]
    if gaps is None:
        return blocks + [Paragraph(f"Not available: `models.csv` has no `{SHIFTED_GAP}` column (a zoo built before "
                                   f"the shifted test set). Rerun `srrbench zoo` with the same profile and `--out`: it "
                                   f"evaluates the finished runs' final checkpoints on the shifted test set, without "
                                   f"training.")]
    shift = f" (`{data.shift}`, `zoo/shift.py`)" if data.shift else " (`zoo/shift.py`)"
    order = gap if gap in GAP_PAIR else IID_GAP
    blocks.append(Paragraph(
        f"`{IID_GAP}` is test CE − train CE; `{SHIFTED_GAP}` is CE on the same test images under a fixed shift"
        f"{shift} − train CE. Ψ of each measure against each gap, with its 95% bootstrap interval and its rank "
        f"among the measures of the width, for the top {TOP_MEASURES} by Ψ on `{order}` and `srr`; every measure "
        f"is in `shifted_gap.csv`. Nakai et al. (2026) find that rankings against the gap change under distribution "
        f"shift; Kendall τ between the two rankings by Ψ over all measures says whether they change here."))
    used, _ = select_models(data.models, include_unreached)
    seed_agreement = {}
    if reliability is not None and not reliability.empty:
        seed_agreement = dict(zip(reliability["width"].map(lambda w: float(w)), reliability["ranking_tau_Psi"]))
    for width, rows in gaps.table.groupby("width", sort=True):
        rows = rows.sort_values([f"Psi_{order}", "measure"], ascending=[False, True], na_position="last")
        shown = rows.head(TOP_MEASURES)
        shown = pd.concat([shown, rows.loc[(rows["measure"] == "srr") & ~rows["measure"].isin(shown["measure"])]])
        table_rows = tuple((str(r["measure"]), _psi_cell(r, IID_GAP), _rank_cell(r[f"rank_{IID_GAP}"]),
                            _psi_cell(r, SHIFTED_GAP), _rank_cell(r[f"rank_{SHIFTED_GAP}"]))
                           for r in shown.to_dict("records"))
        at = used.loc[used["width"] == width]
        medians = ", ".join(f"`{g}` {_number(pd.to_numeric(at[g], errors='coerce').median(), 3)}" for g in GAP_PAIR)
        tau = gaps.agreement[width]
        words = next(text for bound, text in _RANKING_WORDS if tau >= bound) if np.isfinite(tau) else \
            "too few measures with a Ψ on both gaps to compare the rankings"
        top = [set(rows.sort_values(f"Psi_{g}", ascending=False, na_position="last")["measure"].head(TOP_MEASURES))
               for g in GAP_PAIR]
        text = (f"Median gap over the analysed models: {medians}. Kendall τ between the rankings of "
                f"the {gaps.n_measures[width]} measures by Ψ on `{IID_GAP}` and on `{SHIFTED_GAP}`: "
                f"**{_number(tau, 2)}**: {words}; {len(top[0] & top[1])} of the top {TOP_MEASURES} are shared.")
        agreement = seed_agreement.get(float(width))
        if agreement is not None and np.isfinite(agreement):
            text += (f" For scale, the rankings by Ψ on `{gap}` computed on two seeds' models (each seed's alone) "
                     f"agree at τ = {_number(agreement, 2)} (reliability above).")
        blocks += [Heading(3, f"Width {width}: i.i.d. and shifted gap"), Paragraph(text),
                   Table(("measure", f"Ψ on {IID_GAP} [95% CI]", "rank", f"Ψ on {SHIFTED_GAP} [95% CI]", "rank"),
                         table_rows, (False, True, True, True, True))]
    return blocks


def _plot_blocks(plot_result: PlotResult, measures: list[str]) -> list:
    blocks = [Heading(2, "Plots")]
    files = {name: [p for p in paths if p.suffix == ".png"] for name, paths in plot_result.files.items()}

    def image(name: str, alt: str):
        if files.get(name):
            blocks.append(Image(f"plots/{files[name][0].name}", alt))

    if "scatter_srr" in files:
        blocks.append(Heading(3, "SRR vs gap"))
        image("scatter_srr", "SRR vs generalization gap")
    blocks.append(Heading(3, "Top measures vs gap"))
    image("scatter_grid", "Scatter grid of the measures with the largest |Ψ|")
    others = [m for m in measures if f"scatter_{m}" in files]
    if others:
        links = ", ".join(f"[{m}](plots/scatter_{measure_filename(m)}.png)" for m in others)
        blocks.append(Paragraph(f"Every measure's scatter (PNG; PDF beside each): {links}."))
    blocks.append(Heading(3, "Layer-wise SRR over training"))
    if "layerwise_srr" in files:
        image("layerwise_srr", "Layer-wise SRR per variant and epoch")
    else:
        blocks.append(Paragraph(f"Skipped: {plot_result.skipped.get('layerwise_srr', 'not made')}."))
    blocks.append(Heading(3, "Training curves"))
    if "training_curves" in files:
        image("training_curves", "Train and test cross-entropy per epoch")
    else:
        blocks.append(Paragraph(f"Skipped: {plot_result.skipped.get('training_curves', 'not made')}."))
    return blocks


def _measures_blocks(data) -> list:
    blocks = [Heading(2, "Measures and their options")]
    if data.info is not None and "measure" in data.info.columns:
        columns = [c for c in ("measure", "family", "higher_is_complex", "description", "version")
                   if c in data.info.columns]
        rows = tuple(tuple("" if pd.isna(r[c]) else str(r[c]) for c in columns) for r in data.info.to_dict("records"))
        blocks.append(Table(tuple(columns), rows))
    else:
        blocks.append(Paragraph("No measures_info.csv: families and directions unknown."))
    if data.options is not None:
        blocks += [Paragraph("Options used to compute the measures (`measures_options.json`):"),
                   Code(json.dumps(data.options, indent=2, sort_keys=True, default=str), "json")]
    else:
        blocks.append(Paragraph("No measures_options.json in the zoo directory."))
    return blocks


def build_report(data, correlations: pd.DataFrame, kendall: dict, plot_result: PlotResult,
                 gap: str = "gap_loss", now: _dt.datetime | None = None, reliability: pd.DataFrame | None = None,
                 comparisons: pd.DataFrame | None = None, gaps: GapComparison | None = None) -> list:
    """The report's blocks: title, reliability, summary, how to read, Kendall tables, paired comparisons, the
    i.i.d. and shifted gaps side by side (``gaps``; a line saying why when None), plots, measures, profile,
    notes."""
    now = now or _dt.datetime.now().astimezone()
    title = f"Generalization-measure report: {data.directory.resolve().name}"
    settings = correlations.attrs.get("settings", {})
    blocks = [Heading(1, title),
              Paragraph(f"Generated {now:%Y-%m-%d %H:%M %Z} from `{data.directory}`.")]
    blocks += _reliability_blocks(reliability, settings)
    blocks += _summary_blocks(data, correlations, gap)
    blocks += [Heading(2, "How to read this"), Bullets(_HOW_TO_READ)]
    blocks.append(Heading(2, "Kendall tables"))
    for width, table in kendall.items():
        blocks += [Heading(3, f"Width {width}"), Paragraph(kendall_caption(table, gap)),
                   Prerendered(kendall_markdown(table), kendall_html(table)),
                   Paragraph(f"Files: `tables/kendall_width{width}.csv` (with every interval), `.md`, `.tex`.")]
        heatmap = [p for p in plot_result.files.get(f"psi_heatmap_width{width}", []) if p.suffix == ".png"]
        if heatmap:
            blocks.append(Image(f"plots/{heatmap[0].name}", f"ψ heatmap, width {width}"))
    if not kendall:
        blocks.append(Paragraph("No width had analysed models: nothing to tabulate."))
    blocks += _comparison_blocks(comparisons, data, plot_result, settings.get("level", 0.95))
    blocks += _shifted_gap_blocks(gaps, data, gap, reliability, settings.get("include_unreached", False))
    blocks += _plot_blocks(plot_result, list(dict.fromkeys(correlations["measure"])))
    blocks += _measures_blocks(data)
    blocks.append(Heading(2, "Profile"))
    if data.profile_text is not None:
        blocks += [Paragraph("The profile this zoo was built with (`profile.toml`), verbatim:"),
                   Code(data.profile_text, "toml")]
    else:
        blocks.append(Paragraph("No profile.toml in the zoo directory."))
    if data.notes:
        blocks += [Heading(2, "Notes"), Bullets(tuple(data.notes))]
    return blocks


def write_report(data, correlations: pd.DataFrame, kendall: dict, plot_result: PlotResult,
                 gap: str = "gap_loss", reliability: pd.DataFrame | None = None,
                 comparisons: pd.DataFrame | None = None, gaps: GapComparison | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into the zoo directory (atomically); return their paths."""
    blocks = build_report(data, correlations, kendall, plot_result, gap, reliability=reliability,
                          comparisons=comparisons, gaps=gaps)
    title = blocks[0].text
    md_path, html_path = data.directory / "report.md", data.directory / "report.html"
    atomic_write_text(md_path, render_markdown(blocks))
    atomic_write_text(html_path, render_html(blocks, title))
    return md_path, html_path
