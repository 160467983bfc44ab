"""Paper-style Kendall tables, one per width: measures × (ψ per axis, Ψ, τ, CMI, sign-error), as
CSV, Markdown, LaTeX and HTML.

Rows are measures sorted by Ψ (descending, NaN last); SRR measures (family "srr") are marked: an ``is_srr``
column in CSV, bold in Markdown, LaTeX and HTML. The CSV keeps the bootstrap intervals of every statistic; the
Markdown, LaTeX and HTML show them for Ψ and τ as "0.41 [0.30, 0.52]".
"""
from __future__ import annotations

import html
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from zoo.store import atomic_write_text

from .sign_error import SIGN_ERROR_STATISTICS

__all__ = [
    "kendall_table",
    "kendall_markdown",
    "kendall_latex",
    "kendall_html",
    "kendall_caption",
    "write_kendall_tables",
]

_STATISTICS = ("Psi", "tau", "cmi", "sign_error_mean", "sign_error_max")
_DIGITS = {"psi": 2, "Psi": 2, "tau": 2, "cmi": 3,  # CMI scores are small (Jiang et al. print them x 100)
           "sign_error_mean": 2, "sign_error_max": 2}
_WITH_CI = ("Psi", "tau")
_SYMBOL = {"Psi": ("Ψ", r"$\Psi$"), "tau": ("τ", r"$\tau$"), "cmi": ("CMI", "CMI"),
           "sign_error_mean": ("SE mean", "SE mean"), "sign_error_max": ("SE max", "SE max")}


# ---------------------------------------------------------------------------------------------------------------
# The wide table
# ---------------------------------------------------------------------------------------------------------------

def _axes_of(rows: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(rows.loc[rows["statistic"] == "psi", "axis"]))


def kendall_table(correlations: pd.DataFrame, width, info: pd.DataFrame | None = None) -> pd.DataFrame:
    """The Kendall table of one width: one row per measure, sorted by Ψ descending (NaN last, then by name).

    Parameters
    ----------
    correlations : pandas.DataFrame
        ``correlation_table``'s long table (or ``correlations.csv`` read back).
    width
        The width to tabulate.
    info : pandas.DataFrame, optional
        ``measures_info.csv``: ``measure``, ``family``, ``higher_is_complex``. Without it family is empty and
        the expected direction unknown.

    Returns
    -------
    pandas.DataFrame
        Columns ``measure, family, higher_is_complex, is_srr, n_models``, then for each varied axis
        ``psi_<axis>`` with ``psi_<axis>_ci_low`` and ``psi_<axis>_ci_high``, then the same triple for ``Psi``,
        ``tau`` and ``cmi``. ``attrs["width"]`` and ``attrs["axes"]`` say what it covers.
    """
    rows = correlations.loc[correlations["width"] == width]
    # sign-errors enter the wide table overall only (their per-axis rows stay in correlations.csv)
    rows = rows.loc[~(rows["statistic"].isin(SIGN_ERROR_STATISTICS) & (rows["axis"] != "all"))]
    if rows.empty:
        raise ValueError(f"no rows for width {width!r}; widths present: {sorted(correlations['width'].unique())}")
    axes = _axes_of(rows)
    keys = [f"psi_{axis}" for axis in axes] + list(_STATISTICS)
    name = np.where(rows["statistic"] == "psi", "psi_" + rows["axis"].astype(str), rows["statistic"])
    long = rows.assign(key=name)
    wide = long.pivot_table(index="measure", columns="key", values=["value", "ci_low", "ci_high"],
                            aggfunc="first", dropna=False, sort=False)
    table = pd.DataFrame({"measure": list(dict.fromkeys(rows["measure"]))})
    info_by_name = _info_lookup(info)
    table["family"] = [info_by_name.get(m, {}).get("family", "") for m in table["measure"]]
    table["higher_is_complex"] = [info_by_name.get(m, {}).get("higher_is_complex") for m in table["measure"]]
    table["is_srr"] = table["family"].astype(str).str.lower().eq("srr")
    table["n_models"] = rows.groupby("measure", sort=False)["n_models"].max().reindex(table["measure"]).to_numpy()
    for key in keys:
        for part, suffix in (("value", ""), ("ci_low", "_ci_low"), ("ci_high", "_ci_high")):
            column = (part, key)
            values = wide[column].reindex(table["measure"]).to_numpy(dtype=float) if column in wide else np.nan
            table[key + suffix] = values
    table = table.sort_values(["Psi", "measure"], ascending=[False, True], na_position="last", kind="stable")
    table = table.reset_index(drop=True)
    table.attrs.update(width=width, axes=axes)
    return table


def _info_lookup(info: pd.DataFrame | None) -> dict[str, dict]:
    if info is None or "measure" not in info.columns:
        return {}
    lookup = {}
    for record in info.to_dict("records"):
        direction = record.get("higher_is_complex")
        if isinstance(direction, str):
            direction = direction.strip().lower() in ("true", "1", "yes")
        elif direction is not None and not (isinstance(direction, float) and math.isnan(direction)):
            direction = bool(direction)
        else:
            direction = None
        family = record.get("family")
        lookup[str(record["measure"])] = {"family": "" if pd.isna(family) else str(family),
                                          "higher_is_complex": direction}
    return lookup


# ---------------------------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------------------------

def _number(value: float, digits: int) -> str:
    if value is None or not np.isfinite(value):
        return ""
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.00"


def _statistic_of(key: str) -> str:
    return "psi" if key.startswith("psi_") else key


def _expected_sign(direction) -> str:
    return {True: "+", False: "−"}.get(direction, "?")


def _cells(table: pd.DataFrame) -> tuple[list[tuple[str, str]], list[list[tuple[str, str, str]]]]:
    """Columns as (key, kind) and rows of (value text, low text, high text) cells, shared by every renderer."""
    axes = table.attrs.get("axes") or [c[4:] for c in table.columns
                                       if c.startswith("psi_") and not c.endswith(("_ci_low", "_ci_high"))]
    columns = [("measure", "text"), ("family", "text"), ("expected", "text")]
    columns += [(f"psi_{axis}", "value") for axis in axes]
    columns += [(key, "value_ci" if key in _WITH_CI else "value") for key in _STATISTICS]
    rows = []
    for record in table.to_dict("records"):
        cells = []
        for key, kind in columns:
            if key == "expected":
                cells.append((_expected_sign(record.get("higher_is_complex")), "", ""))
            elif kind == "text":
                cells.append((str(record.get(key, "")), "", ""))
            else:
                digits = _DIGITS[_statistic_of(key)]
                low, high = (record.get(f"{key}_ci_low"), record.get(f"{key}_ci_high")) if kind == "value_ci" \
                    else (None, None)
                cells.append((_number(record.get(key), digits), _number(low, digits) if low is not None else "",
                              _number(high, digits) if high is not None else ""))
        rows.append(cells)
    return columns, rows


def _header(key: str, style: str) -> str:
    if key in ("measure", "family"):
        return key.capitalize()
    if key == "expected":
        return "Exp." if style == "tex" else "Expected"
    if key.startswith("psi_"):
        axis = key[4:]
        if style == "tex":
            return rf"$\psi_{{\textrm{{{_tex_escape(axis)}}}}}$"
        return f"ψ {html.escape(axis) if style == 'html' else _md_escape(axis)}"
    text, tex = _SYMBOL[key]
    suffix = " [95% CI]" if key in _WITH_CI else ""
    return tex + (r" [95\% CI]" if suffix else "") if style == "tex" else text + suffix


def _with_ci(value: str, low: str, high: str) -> str:
    return f"{value} [{low}, {high}]" if value and low and high else value


def _md_escape(text: str) -> str:
    return re.sub(r"([|*\\`])", r"\\\1", text)


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


_TEX_GREEK = {"Ψ": r"$\Psi$", "ψ": r"$\psi$", "τ": r"$\tau$"}


def _tex_escape(text: str) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in str(text))


def kendall_caption(table: pd.DataFrame, gap: str | None = None) -> str:
    """One sentence saying what the table holds (plain text)."""
    width = table.attrs.get("width", "?")
    n_models = int(np.nanmax(table["n_models"])) if len(table) else 0
    gap_text = f" ({gap})" if gap else ""
    return (f"Width {width}: rank correlation of each measure with the generalization gap{gap_text} over "
            f"{n_models} models, sorted by Ψ. ψ per varied axis, Ψ = their mean, τ = Kendall's τ-b over all "
            f"models, CMI = conditional mutual information score; 95% bootstrap intervals in brackets; "
            f"SE mean / SE max = robust sign-error over environments (0 best, 0.5 chance); "
            f"Expected = sign a complexity measure should have; SRR measures in bold.")


def kendall_markdown(table: pd.DataFrame) -> str:
    """The table in GitHub Markdown; SRR rows in bold, Ψ and τ as "0.41 [0.30, 0.52]"."""
    columns, rows = _cells(table)
    lines = ["| " + " | ".join(_header(key, "md") for key, _ in columns) + " |",
             "|" + "|".join(":---" if kind == "text" else "---:" for _, kind in columns) + "|"]
    for srr, cells in zip(table["is_srr"], rows):
        texts = []
        for (key, kind), (value, low, high) in zip(columns, cells):
            text = _md_escape(value) if kind == "text" else _with_ci(value, low, high) or "–"
            texts.append(f"**{text}**" if srr and text != "–" else text)
        lines.append("| " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n"


def kendall_html(table: pd.DataFrame) -> str:
    """The table as an HTML ``<table class="kendall">``; SRR rows have ``class="srr"`` and bold text."""
    columns, rows = _cells(table)
    head = "".join(f"<th>{_header(key, 'html')}</th>" for key, _ in columns)
    body = []
    for srr, cells in zip(table["is_srr"], rows):
        texts = []
        for (key, kind), (value, low, high) in zip(columns, cells):
            text = html.escape(value if kind == "text" else _with_ci(value, low, high) or "–")
            text = f"<strong>{text}</strong>" if srr and text != "–" else text
            texts.append(f'<td class="{"text" if kind == "text" else "num"}">{text}</td>')
        body.append(("<tr class=\"srr\">" if srr else "<tr>") + "".join(texts) + "</tr>")
    return ('<table class="kendall">\n<thead><tr>' + head + "</tr></thead>\n<tbody>\n" + "\n".join(body)
            + "\n</tbody>\n</table>\n")


def kendall_latex(table: pd.DataFrame, gap: str | None = None) -> str:
    """The table as a LaTeX ``table`` with booktabs rules (``\\usepackage{booktabs}``); names escaped."""
    columns, rows = _cells(table)
    spec = "".join("l" if kind == "text" else "r" for _, kind in columns)
    width = table.attrs.get("width", "")
    caption = _tex_escape(kendall_caption(table, gap))
    for symbol, tex in _TEX_GREEK.items():
        caption = caption.replace(symbol, tex)
    lines = [r"% needs \usepackage{booktabs}",
             r"\begin{table}[t]", r"\centering", r"\small",
             rf"\caption{{{caption}}}",
             rf"\label{{tab:kendall-width{_tex_escape(width)}}}",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(_header(key, "tex") for key, _ in columns) + r" \\", r"\midrule"]
    for srr, cells in zip(table["is_srr"], rows):
        texts = []
        for (key, kind), (value, low, high) in zip(columns, cells):
            if kind == "text":
                text = _tex_escape(value.replace("−", "-")) if key != "expected" else \
                    {"+": "$+$", "−": "$-$"}.get(value, "?")
                texts.append(rf"\textbf{{{text}}}" if srr and text else text)
            elif not value:
                texts.append("--")
            else:
                number = rf"$\mathbf{{{value}}}$" if srr else f"${value}$"
                ci = rf" {{\scriptsize $[{low}, {high}]$}}" if low and high else ""
                texts.append(number + ci)
        lines.append(" & ".join(texts) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _csv_table(table: pd.DataFrame) -> pd.DataFrame:
    numeric = [c for c in table.columns if c not in ("measure", "family", "higher_is_complex", "is_srr", "n_models")]
    return table.assign(**{c: table[c].round(3) for c in numeric})


def _write(path: Path, text: str) -> Path:
    atomic_write_text(path, text)
    return path


def write_kendall_tables(correlations: pd.DataFrame, info: pd.DataFrame | None, out_dir: str | Path,
                         gap: str | None = None) -> tuple[list[Path], dict]:
    """Write ``kendall_width<W>.csv``, ``.md`` and ``.tex`` for every width of the long table into ``out_dir``.

    Files of an earlier run for widths no longer present are removed. Returns the paths written and the tables
    by width (``kendall_table``'s frames).
    """
    out_dir = Path(out_dir)
    gap = gap or correlations.attrs.get("settings", {}).get("gap")
    paths, tables = [], {}
    for width in sorted(correlations["width"].dropna().unique().tolist()):
        table = kendall_table(correlations, width, info)
        tables[width] = table
        stem = out_dir / f"kendall_width{width}"
        paths.append(_write(stem.with_suffix(".csv"), _csv_table(table).to_csv(index=False)))
        paths.append(_write(stem.with_suffix(".md"),
                                       kendall_caption(table, gap) + "\n\n" + kendall_markdown(table)))
        paths.append(_write(stem.with_suffix(".tex"), kendall_latex(table, gap)))
    written = {p.name for p in paths}
    for old in out_dir.glob("kendall_width*.*"):
        if old.name not in written and old.suffix in (".csv", ".md", ".tex"):
            old.unlink()
    return paths, tables
