"""``mosaics-lab sweep SWEEP.yaml [key=value ...] [--size NAME] [--jobs K] [--n-trials N] [--storage URL]
[--status]``."""

from __future__ import annotations

import argparse
import shlex
import sys
import warnings
from typing import Any

SWEEP_EPILOG = """\
examples:
  mosaics-lab sweep sweeps/v2_bandwidth.yaml --jobs 2        # runs; re-running continues the same study
  mosaics-lab sweep sweeps/lr_search.yaml --n-trials 20 --storage postgresql://user@127.0.0.1/optuna
  mosaics-lab sweep sweeps/v2_bandwidth.yaml --status         # table of trials
  mosaics-lab sweep sweeps/lr_search.yaml train.max_steps=50  # key=value: applied to every trial
  mosaics-lab sweep sweeps/v2_bandwidth.yaml --size smoke     # the file's `sizes: {smoke: ...}` overrides
  mosaics-lab sweep sweeps/lr_search.yaml --retry-failed      # after a fix: the failed trials run again

A bar on stderr (on a terminal) counts the study's trials done / running / failed with the best value
so far, and one line per finished trial gives its state, objective, values and wall time (--quiet: none
of either). A trial's own output goes to its run dir's train.log only.
Trials run in <out>/<study>/trial-<n>/ (a normal run dir each); the study lives in
<out>/<study>/journal.log unless --storage (or storage: in the file) names a database. Ctrl-C stops the
running trials cleanly; they are marked FAILED and re-enqueued, so re-running resumes the study. A
trial killed by a signal is retried up to max_retry times; one that failed by itself (an error, a
divergence) is not, until --retry-failed re-enqueues it (it resumes from its own checkpoint).
"""


class IntermixedParser(argparse.ArgumentParser):
    """Takes ``key=value`` overrides after options too (``sweep f.yaml --jobs 2 train.lr=0.1``): plain
    argparse stops filling a ``nargs="*"`` positional once an option has been seen."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def, override]
        if self._inside:  # parse_known_intermixed_args calls back into parse_known_args
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="run (or resume, or show) an Optuna sweep over a recipe",
        description="Run an Optuna study whose trials are `mosaics-lab train` runs of the base recipe.",
        epilog=SWEEP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sweep", help="sweep file, e.g. sweeps/lr_search.yaml")
    p.add_argument("overrides", nargs="*", help="key.path=value recipe overrides for every trial")
    p.add_argument(
        "--jobs", "-j", type=int, default=1, help="trials run at once by this launcher (default 1)"
    )
    p.add_argument(
        "--size",
        default=None,
        help="an entry of the sweep file's `sizes:` (overrides for every trial, applied after the file's "
        "`overrides:` and before key=value ones); a study keeps the size it was created with",
    )
    p.add_argument("--n-trials", type=int, default=None, help="trials in the study (overrides n_trials)")
    p.add_argument("--storage", default=None, help="SQLAlchemy URL or journal file (overrides storage)")
    p.add_argument("--study", default=None, help="study name (overrides study; also the output folder)")
    p.add_argument("--out", default=None, help="output root (overrides output_root; default runs)")
    p.add_argument("--timeout", type=float, default=None, help="seconds after which no new trial starts")
    p.add_argument("--status", action="store_true", help="print the table of trials and exit")
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="re-enqueue the trials that failed by themselves (errors, divergence), e.g. after a fix; "
        "each resumes in its own run dir from its last checkpoint",
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar and no line per finished trial (notices and the final table remain)",
    )
    p.add_argument(
        "--train-command",
        default=None,
        help="command that trains one trial, given RECIPE key=value...; default: this python -m "
        "mosaics_lab.cli train (e.g. 'torchrun --nproc-per-node 4 -m mosaics_lab.cli train')",
    )
    p.set_defaults(func=run_sweep_cli)
    p.__class__ = IntermixedParser  # the subparsers action builds plain parsers; see the class


def run_sweep_cli(args: argparse.Namespace) -> int:
    try:
        return _run_sweep(args)
    except KeyboardInterrupt:  # before the launcher took over Ctrl-C (loading, validating) or after it
        print("mosaics-lab: interrupted", file=sys.stderr)
        return 130


def _run_sweep(args: argparse.Namespace) -> int:
    import optuna

    from mosaics_lab.sweeps.launcher import default_train_command
    from mosaics_lab.sweeps.report import status_text
    from mosaics_lab.sweeps.spec import SweepError, load_sweep_spec, resolve_sweep
    from mosaics_lab.sweeps.storage import JOURNAL_FILE, make_storage, storage_label
    from mosaics_lab.sweeps.study import open_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the launcher prints its own trial lines
    # Heartbeats and the retry callback are "experimental" in Optuna; they are the documented way.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if args.jobs < 1:
        raise SweepError(f"--jobs must be >= 1, got {args.jobs}")
    if args.status and args.retry_failed:
        raise SweepError(
            "--retry-failed re-runs the failed trials and --status only prints the table: run the "
            "sweep again with --retry-failed and without --status"
        )
    if args.n_trials is not None and args.n_trials < 1:
        raise SweepError(f"--n-trials must be >= 1, got {args.n_trials}")
    spec = load_sweep_spec(args.sweep)
    if args.study:
        spec.study = args.study
    if args.out:
        spec.output_root = args.out
    if args.storage:
        spec.storage = args.storage
    # --status needs only the study's name and storage; the full check of every key is for running.
    sweep = resolve_sweep(args.sweep, args.overrides, spec=spec, validate=not args.status, size=args.size)
    out_dir = sweep.output_dir()
    storage_name = storage_label(out_dir, spec.storage)
    if args.status:
        if not spec.storage and not (out_dir / JOURNAL_FILE).exists():
            raise SweepError(f"no study {sweep.study!r} yet ({out_dir / JOURNAL_FILE} does not exist)")
        study = open_study(sweep, make_storage(sweep, out_dir), create=False)
        sys.stdout.write(status_text(study, sweep, storage_name))
        return 0
    n_trials = args.n_trials or spec.n_trials
    if n_trials is None and not sweep.is_grid and not (args.timeout or spec.timeout):
        raise SweepError(
            f"{args.sweep}: sampler {spec.sampler.type!r} needs a budget: set n_trials (or timeout) in the "
            "file, or pass --n-trials N"
        )
    command = shlex.split(args.train_command) if args.train_command else default_train_command()
    print(f"sweep {sweep.study!r}: storage {storage_name}; trials in {out_dir}", flush=True)
    code, study, written = launch(
        sweep,
        jobs=args.jobs,
        n_trials=n_trials,
        timeout=args.timeout or spec.timeout,
        train_command=command,
        quiet=args.quiet,
        retry_failed=args.retry_failed,
    )
    sys.stdout.write("\n" + status_text(study, sweep, storage_name))
    plots = ", ".join(p.name for p in written["plots"]) or "none"
    print(f"\nwrote {written['md']}, {written['csv']}; plots: {plots}", flush=True)
    return code


def launch(
    sweep: Any,
    *,
    jobs: int = 1,
    n_trials: int | None = None,
    timeout: float | None = None,
    train_command: list[str] | None = None,
    quiet: bool = False,
    retry_failed: bool = False,
) -> tuple[int, Any, dict[str, Any]]:
    """Open (or join) the resolved ``sweep``'s study and run its trials; write its summary and plots.
    Returns (exit code, the optuna study, what ``report.write_report`` wrote). Used by `sweep` and
    by `reproduce`, so a reproduction's sweeps run exactly as `mosaics-lab sweep` runs a file.
    ``retry_failed``: re-enqueue the study's failed trials first (``study.retry_failed``)."""
    from mosaics_lab.sweeps.launcher import Launcher, default_train_command
    from mosaics_lab.sweeps.report import write_report
    from mosaics_lab.sweeps.storage import make_storage, storage_label
    from mosaics_lab.sweeps.study import open_study
    from mosaics_lab.sweeps.study import retry_failed as requeue_failed

    out_dir = sweep.output_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    study = open_study(sweep, make_storage(sweep, out_dir))
    if retry_failed:
        numbers = requeue_failed(study)
        said = (
            f"re-enqueued failed trials {', '.join(map(str, numbers))} (each resumes from its checkpoint)"
            if numbers
            else "no failed trial to retry"
        )
        print(f"[{sweep.study}] --retry-failed: {said}", flush=True)
    launcher = Launcher(
        sweep=sweep,
        study=study,
        out_dir=out_dir,
        jobs=jobs,
        n_trials=n_trials,
        timeout=timeout,
        train_command=train_command or default_train_command(),
        log=lambda msg: print(f"[{sweep.study}] {msg}", flush=True),
        quiet=quiet,
        bar=not quiet and sys.stderr.isatty(),  # a bar for a person watching, nothing in logs
    )
    code = launcher.run()
    written = write_report(study, sweep, out_dir, storage_label(out_dir, sweep.spec.storage))
    for err in launcher.errors:
        print(f"mosaics-lab: launcher error: {err}", file=sys.stderr)
    return code, study, written
