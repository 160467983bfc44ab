"""Experiment 6: how much do SRR's Kendall tau and granulated Psi depend on the choices the paper leaves open?

Starting from the options the zoo's regular measure computation used (``measures_options.json``), one option is
changed at a time: eps^2, the l0 form, the layer aggregation, token normalisation, and the data split. Each run's
final model is loaded once and every setting is evaluated on it (settings that share a data sample share its
forward pass). Then, per width, Kendall tau against the gap and Psi (granulated over the varied axes among
variant / lr / batch_size / dropout, seeds held fixed) with percentile-bootstrap intervals over models.

Only runs with status ``done`` that reached the CE target enter, as in the main analysis (``include_unreached``
keeps the others; the quick smoke zoo needs it, since its 4-epoch models reach no target).
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.bootstrap import bootstrap_ci
from analysis.selection import select_models
from analysis.stats import granulated_kendall, kendall_tau
from measures.compute import evaluate_measures, load_run, make_context
from measures.context import MeasureOptions
from zoo.errors import BadValueError
from zoo.store import RunStore

from .artifacts import SRR_MEASURES, experiment_zoo, measure_options_of, pyplot, run_jobs, save_figure, write_csv

MEASURES = SRR_MEASURES
GRID = {
    "eps_sq": (0.01, 0.1, 0.5, 2.0),
    "l0": ("raw", "per-token", "l1"),
    "aggregate": ("mean", "last", "sum"),
    "normalize_tokens": (False, True),
    "split": ("train", "test"),
}
AXES = ("variant", "lr", "batch_size", "dropout")
COLUMNS = ["width", "option", "value", "is_default", "measure", "statistic", "estimate", "ci_low", "ci_high",
           "n_models"]
VALUE_COLUMNS = ["run_id", "option", "value", "measure", "measure_value"]


def settings(base: dict, grid: dict = GRID) -> list[tuple[str, str, dict]]:
    """(option, value as text, full options) for every value of every option, the others at ``base``; the base
    value of an option is added when the grid lacks it, so every option has its default row."""
    out = []
    for option, values in grid.items():
        values = list(values) + ([base[option]] if base[option] not in values else [])
        out.extend((option, str(value), {**base, option: value}) for value in values)
    return out


def run_settings(zoo: str, run_id: str, base: dict, grid: dict, data_dir: str | None) -> list[dict]:
    """Every setting's measure values on one run's final model (loaded once)."""
    model, init_state, data = load_run(RunStore(zoo), run_id, data_dir)
    results, shared = {}, {}
    rows = []
    for option, value, options in settings(base, grid):
        opts = MeasureOptions.from_dict(options)
        key = json.dumps(opts.as_dict(), sort_keys=True)
        if key not in results:
            ctx = make_context(model, init_state, data, opts)
            # same split, size and seed -> the same sample; its forward pass is shared. SRR's own cache key
            # names eps^2, l0 and normalisation, so nothing computed under one setting leaks into another.
            ctx.cache = shared.setdefault((opts.split, opts.n_samples, opts.seed), {})
            results[key] = evaluate_measures(ctx, list(MEASURES))
        rows.extend({"run_id": run_id, "option": option, "value": value, "measure": m,
                     "measure_value": results[key][m]["value"]} for m in MEASURES)
    return rows


def correlations(values: pd.DataFrame, models: pd.DataFrame, base: dict, gap: str, n_boot: int,
                 seed: int = 0) -> pd.DataFrame:
    """tau and Psi with bootstrap intervals per width, option, value and measure."""
    table = values.merge(models, on="run_id")
    rows = []
    for width, in_width in table.groupby("width", sort=True):
        axes = tuple(a for a in AXES if in_width[a].nunique(dropna=False) > 1)

        def psi(d: pd.DataFrame) -> float:
            return granulated_kendall(d, "measure_value", gap, axes, fixed=("seed",)).Psi if axes else np.nan

        def tau(d: pd.DataFrame) -> float:
            return kendall_tau(d["measure_value"], d[gap])

        for (option, value, measure), frame in in_width.groupby(["option", "value", "measure"], sort=False):
            frame = frame[frame["measure_value"].notna() & frame[gap].notna()].reset_index(drop=True)
            for statistic, fn in (("tau", tau), ("Psi", psi)):
                low, high = bootstrap_ci(frame, fn, n_boot=n_boot, seed=seed)
                rows.append({"width": width, "option": option, "value": value,
                             "is_default": value == str(base.get(option)), "measure": measure,
                             "statistic": statistic, "estimate": fn(frame), "ci_low": low, "ci_high": high,
                             "n_models": len(frame)})
    return pd.DataFrame(rows, columns=COLUMNS)


def plot_heatmap(table: pd.DataFrame, out: Path) -> list[Path]:
    import seaborn as sns
    plt = pyplot()
    psi = table[table["statistic"] == "Psi"].copy()
    psi["setting"] = psi["option"] + "=" + psi["value"] + np.where(psi["is_default"], " (default)", "")
    rows = list(dict.fromkeys(psi["setting"]))
    widths = sorted(psi["width"].unique())
    fig, axes = plt.subplots(1, len(widths), figsize=(1.3 * len(MEASURES) * len(widths) + 2.5, 0.38 * len(rows) + 1.6),
                             squeeze=False)
    for i, (ax, width) in enumerate(zip(axes[0], widths)):
        grid = psi[psi["width"] == width].pivot(index="setting", columns="measure", values="estimate")
        grid = grid.reindex(index=rows, columns=list(MEASURES))
        with warnings.catch_warnings():   # seaborn's own use of a deprecated matplotlib colormap call
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            sns.heatmap(grid, ax=ax, annot=True, fmt=".2f", cmap="RdBu_r", vmin=-1, vmax=1, center=0,
                        cbar=i == len(widths) - 1, cbar_kws={"label": r"granulated Kendall $\Psi$"},
                        yticklabels=i == 0, annot_kws={"fontsize": 7})
        n = int(psi.loc[psi["width"] == width, "n_models"].max())
        ax.set_title(f"width {width} ({n} models)", fontsize=10)
        ax.set_xlabel("measure")
        ax.set_ylabel("option = value" if i == 0 else "")
    fig.suptitle(r"Sensitivity of $\Psi$ (measure vs gap) to SRR's open choices, one changed at a time", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out, "sensitivity")


def srr_headline(table: pd.DataFrame) -> dict:
    """Per width: the range of SRR's tau and Psi over all settings and the option whose values move Psi most."""
    result = {}
    srr = table[table["measure"] == "srr"]
    for width, part in srr.groupby("width"):
        entry = {}
        for statistic in ("tau", "Psi"):
            s = part[part["statistic"] == statistic].dropna(subset=["estimate"])
            if s.empty:
                entry[statistic] = None
                continue
            low, high = s.loc[s["estimate"].idxmin()], s.loc[s["estimate"].idxmax()]
            spread = s.groupby("option")["estimate"].agg(lambda e: e.max() - e.min())
            default = s.loc[s["is_default"], "estimate"]
            entry[statistic] = {"default": float(default.iloc[0]) if len(default) else None,
                                "min": float(low["estimate"]), "min_at": f"{low['option']}={low['value']}",
                                "max": float(high["estimate"]), "max_at": f"{high['option']}={high['value']}",
                                "spread_by_option": {k: float(v) for k, v in spread.items()},
                                "moved_most_by": str(spread.idxmax())}
        result[int(width)] = entry
    return result


def run(out: Path, *, zoo: Path | None = None, quick: bool = False, workers: int = 1, data_dir: str | None = None,
        log=print, include_unreached: bool | None = None, gap: str | None = None, n_boot: int | None = None,
        grid: dict | None = None) -> dict:
    """Write sensitivity.csv, sensitivity_values.csv and sensitivity.png/.pdf into ``out``; return the headline.

    ``include_unreached`` defaults to ``quick``; ``gap`` to the zoo profile's analysis gap, else gap_loss;
    ``n_boot`` to 100 (10 when quick).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    zoo = experiment_zoo(out, zoo, quick, "sensitivity", data_dir, workers, log)
    include_unreached = quick if include_unreached is None else include_unreached
    gap = gap or _profile_gap(zoo)
    n_boot = n_boot or (10 if quick else 100)
    grid = grid or GRID
    base = MeasureOptions.from_dict(measure_options_of(zoo)).as_dict()

    models, counts = select_models(pd.read_csv(zoo / "models.csv"), include_unreached=include_unreached)
    if models.empty:
        raise BadValueError(f"{zoo}: no finished run reached the CE target ({counts['excluded']} excluded); "
                         f"pass include_unreached=True to rank them anyway")
    jobs = [(str(zoo), run_id, base, grid, data_dir) for run_id in models["run_id"]]
    values = pd.DataFrame([row for rows in run_jobs(run_settings, jobs, workers) for row in rows],
                          columns=VALUE_COLUMNS)
    write_csv(values, out / "sensitivity_values.csv")
    table = correlations(values, models[["run_id", "width", "seed", gap, *AXES]], base, gap, n_boot)
    write_csv(table, out / "sensitivity.csv")
    plot_heatmap(table, out)

    headline = srr_headline(table)
    for width, entry in headline.items():
        t, p = entry["tau"], entry["Psi"]
        n_width = int((models["width"] == width).sum())
        log(f"sensitivity width {width} ({n_width} models, {gap}): SRR tau "
            + (f"{t['default']:+.2f} at defaults, range [{t['min']:+.2f} ({t['min_at']}), {t['max']:+.2f} "
               f"({t['max_at']})]" if t else "n/a")
            + "; Psi " + (f"{p['default']:+.2f}, range [{p['min']:+.2f} ({p['min_at']}), {p['max']:+.2f} "
                          f"({p['max_at']})], moved most by {p['moved_most_by']}" if p else "n/a"))
    return {"zoo": str(zoo), "gap": gap, "models": counts, "base_options": base, "srr": headline,
            "seconds": time.perf_counter() - start}


def _profile_gap(zoo: Path) -> str:
    path = zoo / "profile.toml"
    if path.exists() and path.read_text().strip():
        from benchmark.profiles import load_profile
        return load_profile(path).analysis.gap
    return "gap_loss"
