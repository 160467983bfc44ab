"""What every experiment writes and reads: CSVs, figures (PNG + PDF), the zoo it runs on, parallel jobs.

Figures use matplotlib's Agg backend, so experiments run on machines without a display.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd

from zoo.errors import BadValueError, MissingInputError

SMOKE_MEASURE_OPTIONS = {"n_samples": 64}
# what the zoo experiments read from measures.csv: the SRR family (the other measures cost time and are not used)
SRR_MEASURES = ("srr", "srr-last", "sparsity", "rc", "r", "rate-reduction")


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def write_csv(table: pd.DataFrame, path: Path) -> Path:
    from zoo.store import atomic_write_text
    atomic_write_text(path, table.to_csv(index=False))
    return path


def save_figure(fig, out: Path, stem: str) -> list[Path]:
    """``out/stem.png`` and ``out/stem.pdf``; closes the figure."""
    plt = pyplot()
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def experiment_zoo(out: Path, zoo: Path | None, quick: bool, experiment: str, data_dir: str | None = None,
                   workers: int = 1, log=print) -> Path:
    """The zoo an experiment analyses: ``zoo`` if given; in quick mode the smoke profile built into
    ``out/zoo`` (with its measures); otherwise an error saying how to get one."""
    if zoo is not None:
        zoo = Path(zoo)
        if not (zoo / "models.csv").exists():
            raise MissingInputError(f"{zoo / 'models.csv'} not found: --zoo must be a built zoo directory "
                                    f"(srrbench zoo --profile default --out {zoo})")
        return zoo
    if not quick:
        raise BadValueError(f"experiment {experiment!r} needs a built zoo: pass --zoo DIR (e.g. after `srrbench run "
                         f"--profile default --out DIR`), or --quick to build the tiny smoke zoo into "
                         f"{Path(out) / 'zoo'}")
    from measures import compute_zoo
    from benchmark.pipeline import zoo_stage
    from benchmark.profiles import resolve_profile
    zoo = Path(out) / "zoo"
    with torch_threads(1):   # tiny models: see run_jobs
        zoo_stage(resolve_profile("smoke"), zoo, workers=workers, data_dir=data_dir, progress=False, log=log)
    with torch_threads(1):
        compute_zoo(zoo, list(SRR_MEASURES), options=SMOKE_MEASURE_OPTIONS, workers=1, data_dir=data_dir,
                    progress=False, log=log)
    return zoo


def measure_options_of(zoo: Path) -> dict:
    """The measure options the zoo's regular computation used (measures_options.json), else its profile's
    [measures] settings, else the defaults ({})."""
    from zoo.store import read_json
    path = Path(zoo) / "measures_options.json"
    if path.exists():
        return dict(read_json(path))
    profile = Path(zoo) / "profile.toml"
    if profile.exists() and profile.read_text().strip():
        from benchmark.profiles import load_profile
        settings = dict(load_profile(profile).measures)
        settings.pop("names", None)
        return settings
    return {}


def run_jobs(fn: Callable, jobs: Iterable[tuple], workers: int, threads: int = 1) -> list:
    """``[fn(*job) for job in jobs]``, in order; with ``workers > 1`` in joblib processes.

    Every job runs with ``threads`` torch threads (restored afterwards in this process). One is the default: the
    experiments' models are tiny, and on shared or oversubscribed cores a multi-threaded torch step was measured
    20x slower than a single-threaded one (60 s vs 3 s for one 60-epoch digits run), which would also make the
    recorded training times meaningless.
    """
    jobs = list(jobs)
    if workers <= 1 or len(jobs) <= 1:
        return [_with_threads(fn, threads, job) for job in jobs]
    from joblib import Parallel, delayed
    return Parallel(n_jobs=workers)(delayed(_with_threads)(fn, threads, job) for job in jobs)


@contextmanager
def torch_threads(threads: int):
    """Run the block with ``threads`` torch threads, then restore the previous number."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _with_threads(fn: Callable, threads: int, job: tuple):
    with torch_threads(threads):
        return fn(*job)
