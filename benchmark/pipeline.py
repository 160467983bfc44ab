"""The one-command pipeline: zoo -> measures -> layer-wise SRR -> analysis -> report, each stage resumable.

Every stage skips what is already done (finished runs, cached measure values), so rerunning the same command
after an interruption redoes nothing finished.
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from zoo import BadValueError, MissingInputError, ModelConfig, build_zoo
from zoo.runner import ENSEMBLE_SIZE, cached_dataset, dataset_shape

from .profiles import AnalysisSettings, Profile, builtin_profiles, resolve_profile


def profiles_table() -> pd.DataFrame:
    rows = []
    for name in builtin_profiles():
        p = resolve_profile(name)
        rows.append({"profile": name, "dataset": p.data.dataset, "models": p.n_runs,
                     "widths": ",".join(map(str, p.grid.get("width", (p.sections["model"].get("dim",
                                                                                              ModelConfig.dim),)))),
                     "estimate": p.estimate,
                     "description": p.description})
    return pd.DataFrame(rows)


def _profile_of(zoo_dir: Path):
    """The profile stored beside a zoo, validated like any other (None for a zoo built without one)."""
    path = zoo_dir / "profile.toml"
    return resolve_profile(path) if path.exists() and path.read_text().strip() else None


def zoo_stage(profile: Profile, out: Path, workers: int = 1, scheduler: str | None = None,
              data_dir: str | None = None, progress: bool = True, device: str = "cpu",
              ensemble_size: int = ENSEMBLE_SIZE, log=print) -> dict:
    """Train the profile's runs into ``out``, with the profile's TOML stored beside them (profile.toml).
    Every dataset the runs use is loaded first, so a training-set size the data cannot give is one error before
    anything is written."""
    runs = profile.runs(*dataset_shape(profile.data, data_dir))
    for data in dict.fromkeys(run.data for run in runs):
        cached_dataset(data, data_dir)
    return build_zoo(runs, Path(out), name=profile.name, workers=workers, scheduler=scheduler, data_dir=data_dir,
                     progress=progress, device=device, ensemble_size=ensemble_size,
                     files={"profile.toml": profile.source or ""}, log=log)


def measure_settings(profile) -> tuple[list[str] | None, dict]:
    """(names, options) of a profile's [measures] table (validated when the profile was loaded)."""
    settings = dict(profile.measures) if profile else {}
    names = settings.pop("names", None)
    return ([names] if isinstance(names, str) else names), settings


def require_files(zoo_dir: Path, files: dict[str, str]) -> None:
    """Each ``name -> hint`` of ``files`` must exist in ``zoo_dir``; else MissingInputError naming it and the hint."""
    for name, hint in files.items():
        if not (zoo_dir / name).exists():
            raise MissingInputError(f"{zoo_dir / name} not found: {hint}")


def measures_stage(zoo_dir: Path, names=None, workers: int = 1, data_dir: str | None = None,
                   progress: bool = True, log=print) -> pd.DataFrame:
    from measures import compute_zoo, resolve_names
    from measures.layerwise import layerwise_zoo
    resolve_names(names)   # an unknown name is the user's error (UnknownNameError) before any work
    require_files(zoo_dir, {"models.csv": f"build the zoo first (srrbench zoo --out {zoo_dir})"})
    profile_names, settings = measure_settings(_profile_of(zoo_dir))
    # measures named on the command line are added to the table; without names it is the profile's list
    table = compute_zoo(zoo_dir, names or profile_names, options=settings, workers=workers, data_dir=data_dir,
                        progress=progress, keep_existing=names is not None, log=log)
    layerwise_zoo(zoo_dir, options=settings, data_dir=data_dir, progress=progress, log=log)
    return table


def analysis_stage(zoo_dir: Path, gap: str | None = None, include_unreached: bool = False,
                   n_boot: int | None = None, log=print) -> dict:
    from analysis import analyze_zoo
    if n_boot is not None and n_boot < 1:
        raise BadValueError(f"--n-boot must be a positive number of bootstrap resamples, got {n_boot}")
    require_files(zoo_dir, {"models.csv": f"build the zoo first (srrbench zoo --out {zoo_dir})",
                            "measures.csv": f"compute the measures first (srrbench measures --zoo {zoo_dir})"})
    profile = _profile_of(zoo_dir)
    settings = profile.analysis if profile else AnalysisSettings()
    gap = gap or settings.gap
    if gap not in pd.read_csv(zoo_dir / "models.csv", nrows=0).columns:
        raise MissingInputError(f"{zoo_dir / 'models.csv'} has no {gap} column (a zoo built before it was recorded): "
                                f"rerun `srrbench zoo` with the zoo's profile and --out {zoo_dir} to record it from "
                                f"the final checkpoints (no training), or rank against another gap")
    return analyze_zoo(zoo_dir, gap=gap,
                       include_unreached=include_unreached or settings.include_unreached,
                       n_boot=settings.n_boot if n_boot is None else n_boot, seed=settings.seed, log=log)


def run_pipeline(profile_name: str, out: Path, workers: int = 1, scheduler: str | None = None,
                 data_dir: str | None = None, gap: str | None = None, progress: bool = True, device: str = "cpu",
                 ensemble_size: int = ENSEMBLE_SIZE, log=print) -> dict:
    profile = resolve_profile(profile_name)
    start = time.perf_counter()
    timings = {}
    log(f"[1/3] zoo: training {profile.n_runs} models of profile {profile.name!r} into {out}")
    t = time.perf_counter()
    zoo_stage(profile, out, workers=workers, scheduler=scheduler, data_dir=data_dir, progress=progress,
              device=device, ensemble_size=ensemble_size, log=log)
    timings["zoo"] = time.perf_counter() - t
    log("[2/3] measures: complexity measures and layer-wise SRR on every finished model")
    t = time.perf_counter()
    measures_stage(out, workers=workers, data_dir=data_dir, progress=progress, log=log)
    timings["measures"] = time.perf_counter() - t
    log("[3/3] analysis: reliability, Kendall tau, granulated Psi, CMI, sign-error, paired comparisons, tables, "
        "plots, report")
    t = time.perf_counter()
    paths = analysis_stage(out, gap=gap, log=log)
    timings["analysis"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start
    log(f"done in {timings['total']:.0f} s (zoo {timings['zoo']:.0f} s, measures {timings['measures']:.0f} s, "
        f"analysis {timings['analysis']:.0f} s). Report: {out / 'report.html'} (and report.md)")
    return {"timings": timings, "paths": paths}
