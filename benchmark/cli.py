"""``srrbench``: the command line. Each subcommand is a thin wrapper over a library function.

Exit codes: 0 success; 1 a finished command found problems (runs that failed, ``check`` problems); 2 the user's
input is bad (a ``zoo.errors.UsageError``: a bad profile key, a missing data file, an unknown measure), reported in
one line on stderr; 3 an internal error (any other exception: a bug), reported in one line that points at
``--debug``; 130 interrupted. ``--debug`` shows the traceback instead of the one line.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# the error handler's names are imported here, from modules that do not import measures: a measure module that
# fails to import must not fail a second time inside the handler that reports it
from zoo.errors import BadValueError, UnknownNameError, UsageError
from zoo.runner import GAPS

EXIT_USAGE = 2      # the user's input is bad (one line on stderr)
EXIT_INTERNAL = 3   # a bug: any exception that is not a UsageError

EPILOG = """exit codes: 0 ok, 1 failed runs or check problems, 2 bad input, 3 internal error (a bug; see --debug)

examples:
  srrbench run --profile default                 zoo -> measures -> analysis -> report on digits
  srrbench zoo --profile smoke --out out/smoke --workers 2
  srrbench measures --zoo out/smoke --names 'srr*' path-norm
  srrbench measures --checkpoint mlp.pt --model my_models.py:make_mlp --data mnist --data-dir ~/data
  srrbench measures --checkpoint crate.pth --official-crate --heads 6 --data cifar10 --data-dir ~/data
  srrbench analyze --zoo out/smoke --gap gap_shift   rank against the shifted gap
  srrbench profiles                              list the built-in profiles
  srrbench list-measures                         list the registered measures"""


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_profile(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--profile", required=required, default=None if required else "default",
                   help="built-in profile name (see `srrbench profiles`) or path to a TOML file")
    p.add_argument("--data-dir", default=None,
                   help="directory holding CIFAR/MNIST files (not needed for the embedded digits data)")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                   help="where models train (default cpu; auto = cuda when available). Not part of the run id; "
                        "with cuda use --workers 1 per GPU")


def _add_workers(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=None,
                   help="parallel worker processes (default: the number of CPU cores); each trains on one torch "
                        "thread, so results do not depend on this number")


def _add_ensemble(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ensemble-size", type=int, default=None, metavar="N",
                   help="train up to N runs that differ only in lr, dropout and seed together as one stacked "
                        "computation (default 8); 1 trains one run at a time. The models are the same bit for bit "
                        "either way; larger N is faster for small models and needs N times the activation memory")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="srrbench", description="Benchmark generalization measures (SRR, "
                                     "path-norm, sharpness, PAC-Bayes, ...) on a zoo of CRATE transformers.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="the whole pipeline: zoo -> measures -> analysis -> report (resumable)")
    _add_profile(p, required=False)
    p.add_argument("--out", default=None, help="output directory (default: srrbench-out/<profile>)")
    _add_workers(p)
    p.add_argument("--scheduler", default=None, help="Dask scheduler address for the zoo stage (tcp://host:port; "
                                                     'needs the dask extra: pip install -e ".[dask]")')
    _add_device(p)
    _add_ensemble(p)
    p.add_argument("--gap", default=None, choices=GAPS,
                   help="generalization gap to rank against (default: the profile's, else gap_loss); the report "
                        "shows Psi on gap_loss and gap_shift side by side whatever the choice")
    _add_common(p)

    p = sub.add_parser("zoo", help="train every run of a profile's grid into a run store (resumable)")
    _add_profile(p)
    p.add_argument("--out", required=True, help="zoo directory")
    _add_workers(p)
    p.add_argument("--scheduler", default=None,
                   help="address of a Dask distributed scheduler (tcp://host:port), reached before anything "
                        'trains; runs are sent to its workers. Needs the dask extra: pip install -e ".[dask]"')
    _add_device(p)
    _add_ensemble(p)
    _add_common(p)

    p = sub.add_parser("measures", help="compute measures on every finished run of a zoo (cached per run), or on "
                                        "one saved PyTorch classifier (--checkpoint)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--zoo", help="zoo directory")
    source.add_argument("--checkpoint", metavar="FILE",
                        help="state dict of any classifier (torch.save(model.state_dict(), FILE)), loaded with "
                             "weights_only=True; needs --model and --data")
    builder = p.add_mutually_exclusive_group()
    builder.add_argument("--model", metavar="MODULE:FACTORY",
                         help="with --checkpoint: FACTORY() in MODULE (a dotted module or path/to/file.py) returns "
                              "the nn.Module the state dict belongs to")
    builder.add_argument("--official-crate", action="store_true",
                         help="with --checkpoint: the file is a CRATE checkpoint of the official code "
                              "(Ma-Lab-Berkeley/CRATE layout), loaded into our crate variant; needs --heads")
    p.add_argument("--heads", type=int, metavar="K",
                   help="with --official-crate: the model's number of attention heads (the shapes do not tell it)")
    p.add_argument("--data", metavar="NAME",
                   help="with --checkpoint: the dataset the model was trained on (digits, mnist, fashion-mnist, "
                        "cifar10, cifar100), normalised as zoo.data.NORMALISATION says; measures use a fixed sample of "
                        "its training split")
    p.add_argument("--n-train", type=int, metavar="N",
                   help="with --checkpoint: the stratified subset of N training images that a zoo profile's n_train "
                        "gives (split seed 0), for a model trained on it; default the whole training split")
    p.add_argument("--init-checkpoint", metavar="FILE",
                   help="with --checkpoint: state dict at initialisation, for the distance-from-init measures "
                        "(left out without it)")
    p.add_argument("--out", metavar="CSV", help="with --checkpoint: write the row of measures to this CSV file")
    p.add_argument("--names", nargs="+", default=None,
                   help="measure names or patterns such as 'sharp*' (default: the profile's list, else all). With "
                        "--zoo, these are added to the measures the zoo's measures.csv already holds (its other "
                        "columns stay; a run's cached values serve them, recomputed where their code or options "
                        "changed); without --names the table is the profile's list. With --checkpoint, a measure "
                        "the model cannot serve is left out (and listed) when a pattern picked it, an error when "
                        "named exactly")
    _add_workers(p)
    p.add_argument("--data-dir", default=None, help="directory holding the dataset files, if not digits")
    _add_common(p)

    p = sub.add_parser("analyze", help="Kendall tau, granulated psi/Psi, CMI, sign-error; reliability and paired "
                                          "comparisons (seeds as replicates); tables, plots and the report")
    p.add_argument("--zoo", required=True, help="zoo directory with models.csv and measures.csv")
    p.add_argument("--gap", default=None, choices=GAPS,
                   help="gap_loss = test CE - train CE (the paper's, default); gap_acc = train acc - test acc; "
                        "gap_shift = CE on the shifted test set (Gaussian pixel noise, zoo/shift.py) - train CE")
    p.add_argument("--include-unreached", action="store_true",
                   help="also rank models that did not reach the CE target (excluded by default, as in Jiang)")
    p.add_argument("--n-boot", type=int, default=None, help="bootstrap replicates for the CIs (default 200)")
    _add_common(p)

    p = sub.add_parser("experiment", help="one of the paper's experiments: " + ", ".join(EXPERIMENT_NAMES))
    p.add_argument("name", choices=EXPERIMENT_NAMES, help="which experiment")
    p.add_argument("--out", required=True, help="directory for its CSV and plots")
    p.add_argument("--zoo", default=None, help="a built zoo (needed by layerwise and sensitivity)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds), as in the tests")
    _add_workers(p)
    p.add_argument("--data-dir", default=None, help="directory holding the dataset files, if not digits")
    _add_common(p)

    p = sub.add_parser("check", help="verify a zoo directory: config hashes, checkpoint checksums, metrics")
    p.add_argument("--zoo", required=True, help="zoo directory")
    _add_common(p)

    p = sub.add_parser("perf", help="performance benchmark: fast paths against plain reference loops")
    p.add_argument("--out", required=True, help="directory for perf.csv")
    p.add_argument("--quick", action="store_true", help="small sizes (for a smoke test)")
    _add_common(p)

    p = sub.add_parser("profiles", help="list the built-in profiles with model counts")
    _add_common(p)
    p = sub.add_parser("list-measures", help="list the registered measures")
    p.add_argument("pattern", nargs="?", default="*",
                   help="shell-style filter, e.g. 'pacbayes*' (one that matches nothing is an error, exit 2)")
    _add_common(p)
    return parser


EXPERIMENT_NAMES = ("ascent", "layerwise", "regularize", "variants", "sensitivity")


def _workers(args) -> int:
    if args.workers is not None and args.workers < 1:
        raise BadValueError(f"--workers must be >= 1, got {args.workers}")
    return args.workers or (os.cpu_count() or 1)


def _ensemble_size(args) -> int:
    from zoo.runner import ENSEMBLE_SIZE
    if args.ensemble_size is not None and args.ensemble_size < 1:
        raise BadValueError(f"--ensemble-size must be >= 1, got {args.ensemble_size}")
    return args.ensemble_size or ENSEMBLE_SIZE


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("srrbench: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        if isinstance(err, UsageError):
            print(f"srrbench: error: {err}", file=sys.stderr)
            return EXIT_USAGE
        # not the user's input: a bug, whatever its type (a KeyError or ValueError from our code included)
        where = err.__traceback__
        while where.tb_next is not None:
            where = where.tb_next
        frame = where.tb_frame.f_code
        message = next(iter(str(err).splitlines()), "")
        print(f"srrbench: internal error (a bug, not your input): {err.__class__.__name__}: {message} in "
              f"{frame.co_name} ({Path(frame.co_filename).name}:{where.tb_lineno}); rerun with --debug for the "
              f"traceback", file=sys.stderr)
        return EXIT_INTERNAL


def _dispatch(args) -> int:
    from . import pipeline
    progress = not args.quiet
    if args.command == "profiles":
        print(pipeline.profiles_table().to_string(index=False))
        return 0
    if args.command == "list-measures":
        import measures
        matched = [m.name for m in measures.available(args.pattern)]
        if not matched:
            raise UnknownNameError(f"no measure matches {args.pattern!r}; `srrbench list-measures` lists them all")
        table = measures.describe()
        table = table[table["measure"].isin(matched)]
        print(table.to_string(index=False))
        return 0
    if args.command == "zoo":
        summary = pipeline.zoo_stage(pipeline.resolve_profile(args.profile), Path(args.out), workers=_workers(args),
                                     scheduler=args.scheduler, data_dir=args.data_dir, progress=progress,
                                     device=args.device, ensemble_size=_ensemble_size(args))
        return 0 if summary["failed"] == 0 else 1
    if args.command == "measures" and args.checkpoint:
        return _measure_checkpoint(args)
    if args.command == "measures":
        given = [flag for flag, value in (("--model", args.model), ("--official-crate", args.official_crate),
                                          ("--heads", args.heads), ("--data", args.data), ("--n-train", args.n_train),
                                          ("--init-checkpoint", args.init_checkpoint), ("--out", args.out)) if value]
        if given:
            raise BadValueError(f"{', '.join(given)} {'go' if len(given) > 1 else 'goes'} only with --checkpoint; "
                                f"--zoo measures every run of the zoo and writes measures.csv there")
        pipeline.measures_stage(Path(args.zoo), names=args.names, workers=_workers(args),
                                data_dir=args.data_dir, progress=progress)
        return 0
    if args.command == "analyze":
        pipeline.analysis_stage(Path(args.zoo), gap=args.gap, include_unreached=args.include_unreached,
                                n_boot=args.n_boot)
        return 0
    if args.command == "check":
        from zoo.check import check_zoo
        report = check_zoo(args.zoo)
        for problem in report.problems:
            print(f"  {problem}")
        print(f"check {args.zoo}: {report.summary()}")
        return 0 if report.ok else 1
    if args.command == "experiment":
        from .experiments import EXPERIMENTS
        EXPERIMENTS[args.name](Path(args.out), zoo=Path(args.zoo) if args.zoo else None, quick=args.quick,
                               workers=_workers(args), data_dir=args.data_dir)
        return 0
    if args.command == "perf":
        from .perf import run_perf
        run_perf(Path(args.out), quick=args.quick)
        return 0
    if args.command == "run":
        out = Path(args.out) if args.out else Path("srrbench-out") / Path(args.profile).stem
        pipeline.run_pipeline(args.profile, out, workers=_workers(args), scheduler=args.scheduler,
                              data_dir=args.data_dir, gap=args.gap, progress=progress, device=args.device,
                              ensemble_size=_ensemble_size(args))
        return 0
    raise AssertionError(args.command)


def _measure_checkpoint(args) -> int:
    from .saved_model import measure_checkpoint
    builder = ("--official-crate --heads K", args.heads is not None) if args.official_crate else \
        ("--model MODULE:FACTORY (or --official-crate --heads K)", args.model)
    missing = [flag for flag, value in (builder, ("--data NAME", args.data)) if not value]
    if missing:
        raise BadValueError(f"--checkpoint needs {' and '.join(missing)}")
    if args.heads is not None and not args.official_crate:
        raise BadValueError("--heads goes only with --official-crate (a --model factory builds its own heads)")
    table = measure_checkpoint(args.checkpoint, args.model, args.data, data_dir=args.data_dir, n_train=args.n_train,
                               official_heads=args.heads if args.official_crate else None,
                               init_checkpoint=args.init_checkpoint, names=args.names, out=args.out)
    print(table.T.rename(columns={0: "value"}).to_string())
    for name, reason in table.attrs["skipped"].items():
        print(f"left out {name}: it {reason}")
    for name, error in table.attrs["errors"].items():
        print(f"NaN {name}: {error}")
    if args.out:
        print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
