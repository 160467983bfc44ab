"""analyze_zoo end to end on a small synthetic zoo directory: every file, the tables' order and marks, the report's
content, and the same without the optional inputs (layer-wise table, training logs)."""
import itertools
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from analysis.zoo_files import analyze_zoo
from analysis.plots import PlotResult
from analysis.report import Bullets, Code, Heading, Paragraph, Table, render_html, render_markdown

PROFILE = """# a test profile
description = "synthetic zoo for the analysis tests"

[train]
max_epochs = 20
target_ce = 0.02

[grid]
variant = ["crate", "crate-c"]
width = [16, 32]
"""
# "fro_dist%" checks LaTeX escaping, "log-prod/margin" a file name with a slash
MEASURES = ("srr", "fro_dist%", "log-prod/margin")


def make_zoo(directory, with_optional=True):
    """2 widths x 2 variants x 2 lr x 2 batch sizes = 16 models, plus 1 diverged, 1 failed, 1 short of the target."""
    rng = np.random.default_rng(0)
    rows = []
    for i, (w, v, lr, bs) in enumerate(itertools.product((16, 32), ("crate", "crate-c"), (1e-3, 1e-2), (32, 64))):
        rows.append({"run_id": f"run{i:02d}", "variant": v, "lr": lr, "batch_size": bs, "dropout": 0.0, "width": w,
                     "depth": 2, "seed": 0, "dataset": "digits", "status": "done", "reached_target": True,
                     "epochs": 10, "steps": 100, "seconds": 1.0, "train_loss": 0.01})
    extra = [("diverged", False), ("failed", False), ("done", False)]
    for j, (status, reached) in enumerate(extra):
        rows.append({**rows[j], "run_id": f"extra{j}", "status": status, "reached_target": reached})
    models = pd.DataFrame(rows)
    models["gap_loss"] = rng.permutation(len(models)) / 20 + 0.2
    models["test_loss"] = models["train_loss"] + models["gap_loss"]
    models.loc[models["status"] == "failed", ["gap_loss", "test_loss"]] = np.nan
    models["gap_acc"] = models["gap_loss"] / 10
    # the shifted gap: the i.i.d. one doubled in width 16 (same ranking of the models, so the same Ψ), another
    # ordering of the models in width 32
    models["gap_shift"] = np.where(models["width"] == 16, 2 * models["gap_loss"],
                                   np.random.default_rng(1).permutation(len(models)) / 10 + 0.5)
    models.loc[models["status"] == "failed", "gap_shift"] = np.nan
    models["group_id"], models["error"] = models["run_id"], ""
    models.to_csv(directory / "models.csv", index=False)

    gap = models["gap_loss"].fillna(0)
    pd.DataFrame({"run_id": models["run_id"], "srr": -gap + rng.normal(0, 0.05, len(gap)),
                  "fro_dist%": gap + rng.normal(0, 0.05, len(gap)), "log-prod/margin": rng.normal(size=len(gap))}
                 ).to_csv(directory / "measures.csv", index=False)
    pd.DataFrame({"measure": MEASURES, "family": ["srr", "norm", "spectral"], "higher_is_complex": [True, True, True],
                  "description": ["sparse rate reduction", "distance to init", "spectral product over margin"],
                  "version": [1, 1, 1]}).to_csv(directory / "measures_info.csv", index=False)
    (directory / "measures_options.json").write_text(json.dumps({"eps2": 0.5, "n_samples": 64}))
    (directory / "profile.toml").write_text(PROFILE)
    for run_id in models["run_id"]:        # the report reads the CE target from the runs' configs
        (directory / "runs" / run_id).mkdir(parents=True, exist_ok=True)
        (directory / "runs" / run_id / "config.json").write_text(json.dumps({"train": {"target_ce": 0.02}}))
    if with_optional:
        layerwise = [{"run_id": r["run_id"], "variant": r["variant"], "epoch": e, "layer": layer,
                      "srr": 10 - layer - e / 5, "sparsity": 5.0, "rc": 2.0, "r": 3.0}
                     for r in rows[:8] for e in (0, 5, 10) for layer in range(2)]
        pd.DataFrame(layerwise).to_csv(directory / "layerwise.csv", index=False)
        for run_id in ("run00", "run02"):
            run_dir = directory / "runs" / run_id
            run_dir.mkdir(parents=True, exist_ok=True)
            epoch = np.arange(1, 11)
            train = 2.0 * np.exp(-epoch / 2)
            pd.DataFrame({"epoch": epoch, "step": epoch * 10, "lr": 1e-3, "seconds": epoch * 0.1,
                          "train_loss": train, "train_acc": 1 - train / 3, "test_loss": train + 0.4,
                          "test_acc": 0.8}).to_csv(run_dir / "log.csv", index=False)
    return directory


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    directory = make_zoo(tmp_path_factory.mktemp("zoo"))
    lines = []
    result = analyze_zoo(directory, n_boot=20, log=lines.append)
    return directory, result, lines


def psi_column(markdown_table: str) -> list[float]:
    lines = [line for line in markdown_table.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    index = header.index("Ψ [95% CI]")
    values = []
    for line in lines[2:]:
        cell = line.strip("|").split("|")[index].strip().strip("*")
        values.append(float(cell.split(" ")[0]))
    return values


def test_every_file_is_written(analysed):
    directory, result, _ = analysed
    expected = ["correlations.csv", "comparisons.csv", "analysis_summary.json", "report.md", "report.html"]
    expected += [f"tables/kendall_width{w}.{ext}" for w in (16, 32) for ext in ("csv", "md", "tex")]
    stems = ["scatter_srr", "scatter_fro_dist_", "scatter_log-prod-over-margin", "scatter_grid",
             "psi_heatmap_width16", "psi_heatmap_width32", "layerwise_srr", "training_curves"]
    stems += [f"comparisons_{s}_width{w}" for s in ("Psi", "tau") for w in (16, 32)]
    expected += [f"plots/{stem}.{ext}" for stem in stems for ext in ("png", "pdf")]
    for name in expected:
        assert (directory / name).is_file(), name
    assert (directory / "plots/scatter_srr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (directory / "plots/scatter_srr.pdf").read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in result["plots"]) == sorted(f"{s}.{e}" for s in stems for e in ("png", "pdf"))
    assert result["skipped"] == {}
    assert not list(directory.rglob(".*.tmp")), "a temporary file was left behind"
    # one seed per configuration: no reliability to measure, and the report says so first
    assert result["reliability"] is None and not (directory / "reliability.csv").exists()
    report = (directory / "report.md").read_text()
    assert report.index("## Reliability of this study") < report.index("## Zoo summary")
    assert "cannot measure its own noise" in report


def test_comparisons_csv_holds_every_pair_of_each_width_and_statistic(analysed):
    directory, _, _ = analysed
    comparisons = pd.read_csv(directory / "comparisons.csv")
    assert list(comparisons.columns[:8]) == ["width", "measure_a", "measure_b", "statistic", "diff", "ci_low",
                                             "ci_high", "resolved"]
    assert len(comparisons) == 2 * 2 * 3  # widths x (Psi, tau) x pairs of 3 measures
    resolved = comparisons["resolved"].astype(bool)
    excludes_zero = (comparisons["ci_low"] > 0) | (comparisons["ci_high"] < 0)
    assert (resolved == excludes_zero).all()
    correlations = pd.read_csv(directory / "correlations.csv")
    row = comparisons.iloc[0]
    point = correlations.loc[(correlations["width"] == row["width"]) & (correlations["axis"] == "all")
                             & (correlations["statistic"] == row["statistic"])].set_index("measure")["value"]
    assert row["diff"] == pytest.approx(point[row["measure_a"]] - point[row["measure_b"]])


def test_correlations_csv_is_the_long_table(analysed):
    directory, _, _ = analysed
    table = pd.read_csv(directory / "correlations.csv")
    assert list(table.columns) == ["width", "measure", "statistic", "axis", "value", "ci_low", "ci_high",
                                   "n_models", "n_groups"]
    assert set(table["width"]) == {16, 32}
    assert set(table["measure"]) == set(MEASURES)
    # 8 models per width reached the target; the diverged, failed and short runs are out
    assert set(table["n_models"]) == {8}


def test_markdown_table_is_sorted_by_psi_and_marks_srr(analysed):
    directory, _, _ = analysed
    for width in (16, 32):
        markdown = (directory / f"tables/kendall_width{width}.md").read_text()
        psi = psi_column(markdown)
        assert len(psi) == 3 and psi == sorted(psi, reverse=True)
        srr_rows = [line for line in markdown.splitlines() if line.startswith("| **srr**")]
        assert len(srr_rows) == 1 and "**srr**" in srr_rows[0]
        assert not any("**" in line for line in markdown.splitlines() if "fro\\_dist" in line or "fro_dist" in line)
        csv = pd.read_csv(directory / f"tables/kendall_width{width}.csv")
        assert list(csv["Psi"]) == sorted(csv["Psi"], reverse=True)
        assert dict(zip(csv["measure"], csv["is_srr"])) == {"srr": True, "fro_dist%": False, "log-prod/margin": False}
        assert {"family", "higher_is_complex", "Psi_ci_low", "Psi_ci_high", "tau", "cmi",
                "psi_lr", "psi_variant", "psi_batch_size"} <= set(csv.columns)


def test_srr_built_against_the_gap_comes_out_negative(analysed):
    # srr = −gap + small noise and fro_dist% = gap + small noise: signs are kept, not flipped
    directory, _, _ = analysed
    csv = pd.read_csv(directory / "tables/kendall_width16.csv").set_index("measure")
    assert csv.loc["srr", "tau"] < -0.5 < 0.5 < csv.loc["fro_dist%", "tau"]
    assert list(csv.index) == ["fro_dist%", "log-prod/margin", "srr"]


def test_latex_table_escapes_names_and_uses_booktabs(analysed):
    directory, _, _ = analysed
    tex = (directory / "tables/kendall_width16.tex").read_text()
    assert r"fro\_dist\%" in tex and "fro_dist%" not in tex
    assert r"\textbf{srr}" in tex
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert tex.count(rule) == 1
    assert r"$\psi_{\textrm{batch\_size}}$" in tex


def test_report_holds_counts_tables_plots_and_profile(analysed):
    directory, _, lines = analysed
    report = (directory / "report.md").read_text()
    assert PROFILE.strip() in report
    assert "Models in the zoo: **19** (diverged: 1, done: 17, failed: 1)" in report
    assert "Excluded from the analysis: **3** (not reached: 1, diverged: 1, failed: 1)" in report
    assert "Finished runs that reached the CE target (train CE ≤ 0.02): **16**" in report
    assert "| 16 | 8 |" in report  # gap spread row of width 16
    assert "### Width 16" in report and "### Width 32" in report
    assert "| **srr** |" in report
    for image in ("plots/scatter_srr.png", "plots/scatter_grid.png", "plots/psi_heatmap_width16.png",
                  "plots/layerwise_srr.png", "plots/training_curves.png"):
        assert f"]({image})" in report
    assert '"eps2": 0.5' in report
    assert "How to read this" in report
    assert any(line.startswith("report:") for line in lines)

    page = (directory / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert '<img src="plots/scatter_srr.png"' in page
    assert '<table class="kendall">' in page and '<tr class="srr">' in page
    assert "[grid]\nvariant = [&quot;crate&quot;, &quot;crate-c&quot;]" in page  # the profile, escaped, verbatim
    assert "**" not in page


def test_rerun_without_optional_inputs_skips_those_plots_and_says_so(analysed, tmp_path):
    directory = tmp_path / "zoo"
    shutil.copytree(analysed[0], directory)  # an analysed zoo, outputs included
    assert (directory / "plots/layerwise_srr.png").exists()
    (directory / "layerwise.csv").unlink()
    for log in directory.glob("runs/*/log.csv"):
        log.unlink()

    # a second seed of every model (gap and measures shifted a little), and a path-norm measure to compare SRR with
    models = pd.read_csv(directory / "models.csv")
    second = models.assign(run_id=models["run_id"] + "s1", seed=1, gap_loss=models["gap_loss"] + 0.01)
    pd.concat([models, second]).to_csv(directory / "models.csv", index=False)
    measures = pd.read_csv(directory / "measures.csv")
    pd.concat([measures, measures.assign(run_id=measures["run_id"] + "s1", srr=measures["srr"] * 1.1)]
              ).to_csv(directory / "measures.csv", index=False)
    info = pd.read_csv(directory / "measures_info.csv")
    info.loc[info["measure"] == "fro_dist%", "family"] = "path-norm"
    info.to_csv(directory / "measures_info.csv", index=False)

    result = analyze_zoo(directory, n_boot=10, log=None)
    reliability = pd.read_csv(result["reliability"])
    assert list(reliability["width"]) == [16, 32] and set(reliability["n_seeds"]) == {2}
    # both seeds order the configurations alike (gap + 0.01, measures scaled): replicates agree perfectly
    assert np.allclose(reliability["gap_tau"], 1.0) and np.allclose(reliability["ranking_tau_Psi"], 1.0)
    report = (directory / "report.md").read_text()
    assert report.index("## Reliability of this study") < report.index("## Zoo summary")
    assert "| 16 | 16 | 8 | 2 |" in report and "hierarchical" in report
    assert re.search(r"width 16: srr − fro_dist%: ΔΨ = [-+]\d\.\d{3} \[", report)
    assert not (directory / "layerwise.csv").exists()
    assert set(result["skipped"]) == {"layerwise_srr", "training_curves"}
    # the rerun replaced the report and removed the figures it no longer makes
    assert not (directory / "plots/layerwise_srr.png").exists()
    assert not (directory / "plots/training_curves.pdf").exists()
    assert (directory / "plots/scatter_srr.png").exists()
    report = (directory / "report.md").read_text()
    assert "Skipped: no layerwise.csv in the zoo directory." in report
    assert "Skipped: no runs/*/log.csv in the zoo directory." in report
    assert "plots/layerwise_srr.png" not in report


def test_missing_required_input_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="models.csv"):
        analyze_zoo(tmp_path, log=None)


def test_renderers_agree_on_a_small_page():
    blocks = [Heading(1, "T"), Paragraph("a `b` **c**"), Bullets(("x", "y")), Table(("k", "v"), (("a|b", "1"),),
                                                                                  (False, True)),
              Code("x = ```\n")]
    markdown = render_markdown(blocks)
    assert markdown.startswith("# T\n\na `b` **c**\n\n- x\n- y\n\n| k | v |\n|:---|---:|\n| a\\|b | 1 |")
    assert "````\nx = ```\n````" in markdown  # a fence longer than any backtick run inside
    page = render_html(blocks, "T")
    assert "<p>a <code>b</code> <strong>c</strong></p>" in page
    assert '<td class="num">1</td>' in page and "<pre><code>x = ```</code></pre>" in page
    assert re.search(r"<title>T</title>", page)


# --- the i.i.d. and the shifted gap side by side ------------------------------------------------------------------

def side_by_side(report: str, width: int) -> tuple[str, dict]:
    """The paragraph and the rows (measure -> cells) of the side-by-side section of one width."""
    section = report.split("## I.i.d. and shifted gap side by side")[1].split("\n## ")[0]
    part = section.split(f"### Width {width}: i.i.d. and shifted gap")[1].split("\n### ")[0]
    paragraph = part.strip().split("\n\n")[0]
    rows = [line.strip("|").split("|") for line in part.splitlines() if line.startswith("| ")][1:]
    return paragraph, {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


def test_report_shows_psi_on_both_gaps_with_the_ranking_agreement(analysed):
    """Ψ [CI] and rank on each gap equal the correlation table's against that gap (same bootstrap seed); τ between
    the two rankings is Kendall's τ of the two Ψ columns over the measures."""
    from analysis import correlation_table, kendall_tau
    directory, result, lines = analysed
    models, measures = pd.read_csv(directory / "models.csv"), pd.read_csv(directory / "measures.csv")
    psi = {}
    for gap in ("gap_loss", "gap_shift"):
        table = correlation_table(models, measures, gap=gap, n_boot=20, n_boot_cmi=0)
        psi[gap] = table.loc[table["statistic"] == "Psi"].set_index(["width", "measure"])
    report = (directory / "report.md").read_text()
    for width in (16, 32):
        paragraph, rows = side_by_side(report, width)
        assert set(rows) == set(MEASURES)                   # 3 measures: all of them are in the top 10
        for gap, cells in (("gap_loss", (0, 1)), ("gap_shift", (2, 3))):
            at = psi[gap].loc[width]
            ranks = at["value"].rank(ascending=False, method="min")
            for measure, row in rows.items():
                r = at.loc[measure]
                assert row[cells[0]] == f"{r['value']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]", (gap, measure)
                assert row[cells[1]] == str(int(ranks[measure]))
        # the rows are in order of Ψ on the chosen gap (gap_loss)
        assert list(rows) == list(psi["gap_loss"].loc[width]["value"].sort_values(ascending=False).index)
        tau = kendall_tau(psi["gap_loss"].loc[width]["value"], psi["gap_shift"].loc[width]["value"].reindex(
            psi["gap_loss"].loc[width].index))
        assert f"on `gap_loss` and on `gap_shift`: **{tau:.2f}**" in paragraph
    # width 16's shifted gap is the i.i.d. one doubled: the same Ψ, the same ranking
    paragraph, rows = side_by_side(report, 16)
    assert "**1.00**: the ranking stays largely the same" in paragraph and "3 of the top 10 are shared" in paragraph
    assert all(row[0] == row[2] and row[1] == row[3] for row in rows.values())
    saved = pd.read_csv(result["shifted_gap"])
    assert len(saved) == 2 * len(MEASURES)
    assert saved.set_index(["width", "measure"])["Psi_gap_shift"].to_dict() == pytest.approx(
        psi["gap_shift"]["value"].to_dict())
    summary = json.loads((directory / "analysis_summary.json").read_text())
    assert summary["shifted_gap"]["ranking_tau_Psi"]["16"] == pytest.approx(1.0)
    assert any(line.startswith("shifted gap: Psi on gap_loss and gap_shift") for line in lines)


def test_ranking_against_the_shifted_gap(analysed, tmp_path):
    """--gap gap_shift: the tables rank against it, and the side-by-side rows follow its Ψ (no extra computation
    for it: the main correlations are reused)."""
    directory = tmp_path / "zoo"
    shutil.copytree(analysed[0], directory)
    result = analyze_zoo(directory, gap="gap_shift", n_boot=20, log=None)
    table = pd.read_csv(result["correlations"])
    models, measures = pd.read_csv(directory / "models.csv"), pd.read_csv(directory / "measures.csv")
    expected = correlation_table_psi(models, measures, "gap_shift")
    got = table.loc[table["statistic"] == "Psi"].set_index(["width", "measure"])["value"]
    assert got.to_dict() == pytest.approx(expected.to_dict())
    report = (directory / "report.md").read_text()
    assert "gap: `gap_shift` (shifted gap: CE on the shifted test set − train CE (nats))" in report
    _, rows = side_by_side(report, 32)
    assert list(rows) == list(expected.loc[32].sort_values(ascending=False).index)


def correlation_table_psi(models, measures, gap):
    from analysis import correlation_table
    table = correlation_table(models, measures, gap=gap, n_boot=20)
    return table.loc[table["statistic"] == "Psi"].set_index(["width", "measure"])["value"]


def test_a_zoo_without_the_shifted_gap_says_how_to_get_it(analysed, tmp_path):
    """models.csv of a zoo built before the shifted test set: no side-by-side table, and the report says why."""
    from analysis import measure_correlations, read_zoo
    from analysis.report import build_report
    from analysis.zoo_files import gap_pair
    directory = tmp_path / "zoo"
    shutil.copytree(analysed[0], directory)
    pd.read_csv(directory / "models.csv").drop(columns=["gap_shift"]).to_csv(directory / "models.csv", index=False)
    data = read_zoo(directory)
    correlations = measure_correlations(data.models, data.measures, n_boot=5, n_boot_cmi=0).table
    assert gap_pair(data, correlations, "gap_loss", n_boot=5) is None
    report = render_markdown(build_report(data, correlations, {}, PlotResult(), "gap_loss"))
    section = report.split("## I.i.d. and shifted gap side by side")[1].split("\n## ")[0]
    assert "Not available: `models.csv` has no `gap_shift` column" in section and "Rerun `srrbench zoo`" in section
