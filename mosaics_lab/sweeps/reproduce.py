"""``mosaics-lab reproduce STUDY [--size smoke|cpu|gpu]``: one paper claim, rerun with one command.

A study is a sweep file under ``sweeps/reproduce/`` (a grid of ``recipe:`` cells, one per
architecture, the learning rates to search in ``space``, ``seeds``, ``sizes``) with a ``reproduce:``
section saying how to run and report it (``ReproduceSpec``). It runs in four steps, each resumable
(the sweep storage keeps the trials; finished evaluations are not redone), so a reproduction longer
than one sitting continues where it stopped when the same command is run again:

1. calibrate: the grid's cells x every value of ``calibrate`` (the learning rate), on the first seed,
   at one point of the axis (``axis.calibrate_at``), as study ``<study>-calibrate``; then, while a
   cell's best value is an edge of the values tried, the nearest value beyond it from
   ``calibrate_beyond``, one round at a time (``<study>-calibrate-2``, ...), so the kept value is
   bracketed where the file allows (the report lists the cells where it is not);
2. main: each cell at its calibrated value (lowest final ``val/loss``, the validation split), x every
   axis value (a budget, a number of training languages), x every seed, as study ``<study>``
   (``<study>-r<N>`` after N calibration rounds, reusing an earlier main study's runs at the values
   still kept); the first seed at the calibration point is the calibration run at that value itself
   (same recipe, same seed, same budget: training it again gave the same numbers bit for bit), so
   it is reused, not retrained;
3. evaluate: every completed main trial (and reused calibration run) on each ``evaluate`` entry
   (test split; ``ablate`` removes a memory at evaluation), written into the trial's run dir
   (``eval/<name>.json``);
4. report: ``reports/<study>.md`` + PNGs + ``<study>_results.json`` (``analysis.study``), from the
   run dirs alone; ``--report-only`` re-renders the stored ``results.json`` without any run.

The smoke size (minutes on a CPU: the slow test suite runs it) writes its report under the study's
output folder, never over the committed reports. Where ``runs/`` does not outlive a sitting,
``--save-state FILE`` / ``--resume-from FILE`` carry the reproduction over without its weights
(``sweeps.state``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mosaics_lab.sweeps.spec import SweepError, SweepSpec, at_size, format_override, load_sweep_spec

STUDY_DIR = Path("sweeps/reproduce")
REPORT_DIR = Path("reports")
SMOKE = "smoke"


@dataclass
class EvalJob:
    task: str
    lengths: Optional[str] = None
    shots: Optional[str] = None
    ablate: Optional[str] = None
    task_args: dict[str, Any] = field(default_factory=dict)
    archs: list[str] = field(default_factory=list)  # empty: every architecture


@dataclass
class AxisSpec:
    key: str = ""
    values: dict[str, list[Any]] = field(default_factory=dict)  # size -> axis values
    calibrate_at: dict[str, Any] = field(default_factory=dict)  # size -> the value calibration runs at
    # size -> {key: template}: keys set with each axis value, "{}" replaced by it (e.g. a data path
    # per number of training languages)
    also: dict[str, dict[str, str]] = field(default_factory=dict)

    def cell(self, size: str, value: Any) -> dict[str, Any]:
        """The overrides of one axis point."""
        also = self.also.get(size, {})
        return {self.key: value, **{k: t.replace("{}", str(value)) for k, t in also.items()}}


@dataclass
class GateSpec:
    eval: Optional[str] = None
    metric: str = "accuracy"
    point: str = "1x"
    margin: float = 0.2
    chance: Optional[float] = None  # used when the evaluation records no chance level


@dataclass
class ReproduceSpec:
    title: str = ""
    claim: str = ""
    published: str = ""
    notes: str = ""
    # size -> what that size's measured numbers show and the verdict on the claim, written after the
    # run and rendered as the report's "What the numbers show" (empty: the section says none yet)
    reading: dict[str, str] = field(default_factory=dict)
    calibrate: str = "train.lr"  # a categorical `space` key, searched on the first seed
    # size -> values of `calibrate` that may be searched beyond the `space` choices, one per round:
    # while a cell's best value is the lowest (highest) value tried, the nearest lower (higher) one of
    # these is trained on the same seed, until the best is bracketed or none is left on that side
    calibrate_beyond: dict[str, list[Any]] = field(default_factory=dict)
    group_by: list[str] = field(default_factory=lambda: ["model.arch"])
    axis: Optional[AxisSpec] = None
    evaluate: list[EvalJob] = field(default_factory=list)
    eval_batches: dict[str, int] = field(default_factory=dict)  # size -> batches per evaluated point
    eval_batch_size: dict[str, int] = field(default_factory=dict)  # size -> sequences per batch (16)
    gate: GateSpec = field(default_factory=GateSpec)


def parse_reproduce(raw: dict[str, Any], source: str) -> ReproduceSpec:
    if not raw:
        raise SweepError(f"{source}: a reproduction needs a `reproduce:` section (see sweeps/reproduce/)")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ReproduceSpec), raw)
        spec = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise SweepError(
            f"{source}: reproduce.{getattr(exc, 'full_key', '?')}: {str(exc).splitlines()[0]}"
        ) from exc
    assert isinstance(spec, ReproduceSpec)
    if not spec.title:
        raise SweepError(f"{source}: reproduce.title is required")
    return spec


def study_path(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return path
    path = STUDY_DIR / f"{name}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in STUDY_DIR.glob("*.yaml"))
        raise SweepError(f"no study {name!r} ({path} not found); studies: {', '.join(names) or 'none'}")
    return path


def _per_size(mapping: dict[str, Any], size: str, what: str, source: Path) -> Any:
    if size not in mapping:
        raise SweepError(f"{source}: {what} has no value for size {size!r} (has: {', '.join(mapping)})")
    return mapping[size]


# --- the two sweeps --------------------------------------------------------------------------------


def calibration_spec(spec: SweepSpec, rep: ReproduceSpec, size: str, source: Path) -> SweepSpec:
    if rep.calibrate not in spec.space or spec.space[rep.calibrate].type != "categorical":
        raise SweepError(
            f"{source}: reproduce.calibrate {rep.calibrate!r} must be a categorical param of `space:`"
        )
    grid = [dict(cell) for cell in spec.grid] or [{}]
    if rep.axis is not None:
        at = _per_size(rep.axis.calibrate_at, size, "reproduce.axis.calibrate_at", source)
        grid = [{**cell, **rep.axis.cell(size, at)} for cell in grid]
    return dataclasses.replace(spec, study=f"{spec.study}-calibrate", grid=grid, seeds=spec.seeds[:1])


def main_spec(spec: SweepSpec, rep: ReproduceSpec, size: str, chosen: list[Any], source: Path) -> SweepSpec:
    """The grid's cells at their calibrated values (``chosen``, one per cell), x the axis, x seeds,
    less each cell's first seed at the calibration point: that run is the calibration run at the
    chosen value (``choose`` returns it), so the seeds are written into the grid's rows."""
    from mosaics_lab.sweeps.spec import SEED_KEY

    cells = [dict(cell) for cell in spec.grid] or [{}]
    at = None
    if rep.axis is not None:
        values = _per_size(rep.axis.values, size, "reproduce.axis.values", source)
        at = _per_size(rep.axis.calibrate_at, size, "reproduce.axis.calibrate_at", source)
    seeds: list[int | None] = list(spec.seeds) or [None]  # None: the recipe's own seed
    grid = []
    for cell, value in zip(cells, chosen):
        for v in values if rep.axis is not None else [None]:
            point = {} if rep.axis is None else rep.axis.cell(size, v)
            for seed in seeds:
                if seed == seeds[0] and (rep.axis is None or v == at):
                    continue  # the calibration run (reused)
                grid.append(
                    {**cell, rep.calibrate: value, **point, **({} if seed is None else {SEED_KEY: seed})}
                )
    space = {k: p for k, p in spec.space.items() if k != rep.calibrate}
    return dataclasses.replace(spec, grid=grid, space=space, seeds=[])


@dataclass
class Calibration:
    """What the calibration rounds found, per grid cell of the study file."""

    chosen: list[Any]  # the value with the lowest final val/loss
    table: list[dict[str, Any]]  # every calibration run: cell, recipe, value, val/loss, status, round
    best_runs: list[Path]  # the run at the chosen value: the main study's first seed at the calibration point
    tried: list[list[Any]]  # the values trained to the end (completed, or failed: diverged)

    def edge(self, i: int) -> Optional[str]:
        """``"lowest"`` / ``"highest"`` when cell ``i``'s chosen value is that edge of the values tried
        (not bracketed by a value on the other side), else None."""
        tried, best = self.tried[i], self.chosen[i]
        if len(tried) > 1 and best == min(tried):
            return "lowest"
        if len(tried) > 1 and best == max(tried):
            return "highest"
        return "only" if len(tried) == 1 else None

    def next_values(self, beyond: list[Any]) -> list[tuple[int, Any]]:
        """(cell, value) pairs to train next: per cell whose best value sits at an edge of the values
        tried, the nearest value of ``beyond`` past that edge; empty once every cell is bracketed or has
        no value left beyond its edge."""
        todo = []
        for i, best in enumerate(self.chosen):
            edge = self.edge(i)
            lower = [v for v in beyond if v < best and v not in self.tried[i]]
            higher = [v for v in beyond if v > best and v not in self.tried[i]]
            if edge in ("lowest", "only") and lower:
                todo.append((i, max(lower)))
            elif edge in ("highest", "only") and higher:
                todo.append((i, min(higher)))
        return todo

    def edges(self, labels: list[str], key: str) -> list[str]:
        """One line per cell whose chosen value is not bracketed by the values tried."""
        out = []
        for i, label in enumerate(labels):
            edge = self.edge(i)
            if edge == "only":
                out.append(f"{label}: {key} = {self.chosen[i]} is the only value tried")
            elif edge:
                tried = _values(self.tried[i])
                out.append(f"{label}: {key} = {self.chosen[i]} is the {edge} value tried ({tried})")
        return out


def _values(values: list[Any]) -> str:
    return ", ".join(map(str, sorted(values)))


def calibration_round_spec(
    spec: SweepSpec, rep: ReproduceSpec, size: str, source: Path, todo: list[tuple[int, Any]], round_no: int
) -> SweepSpec:
    """Calibration round ``round_no`` (2, 3, ...): only the (cell, value) pairs of ``todo``, on the first
    seed at the calibration point, as study ``<study>-calibrate-<round_no>``."""
    cells = [dict(cell) for cell in spec.grid] or [{}]
    point = {}
    if rep.axis is not None:
        at = _per_size(rep.axis.calibrate_at, size, "reproduce.axis.calibrate_at", source)
        point = rep.axis.cell(size, at)
    grid = [{**cells[i], **point, rep.calibrate: value} for i, value in todo]
    space = {k: p for k, p in spec.space.items() if k != rep.calibrate}
    return dataclasses.replace(
        spec, study=f"{spec.study}-calibrate-{round_no}", grid=grid, space=space, seeds=spec.seeds[:1]
    )


def main_study_name(study: str, rounds: int) -> str:
    """The main study after ``rounds`` calibration rounds: ``<study>`` after one (the chosen values
    follow from the file's own choices), ``<study>-r<rounds>`` after more (its grid may differ)."""
    return study if rounds == 1 else f"{study}-r{rounds}"


def reuse_finished(
    grid: list[dict[str, Any]], dirs: list[Path], source: Path
) -> tuple[list[dict[str, Any]], list[Path]]:
    """``grid``'s rows without a completed run under ``dirs`` (earlier rounds' main studies), and the
    runs that stand in for the others (each row's first match)."""
    from mosaics_lab.analysis.runs import RunsError, discover_runs, load_runs

    try:
        found = load_runs(discover_runs([str(d) for d in dirs if d.is_dir()]))
        runs = [r for r in found if r.status == "completed"]
    except RunsError:
        runs = []
    remaining, reused = [], []
    for row in grid:
        match = next((r for r in runs if _run_matches(r.recipe, row, source)), None)
        if match is None:
            remaining.append(row)
        else:
            reused.append(match.path)
    return remaining, reused


def choose(
    calibration_dirs: Path | list[Path], spec: SweepSpec, rep: ReproduceSpec, source: Path
) -> Calibration:
    """Per grid cell, the calibrated value with the lowest final val/loss over every calibration round
    (``calibration_dirs``, in round order), every run tried, and per cell the run at the chosen value
    (the main study's first seed at the calibration point)."""
    from mosaics_lab.analysis.runs import RunsError, discover_runs, load_runs
    from mosaics_lab.constants import VAL_LOSS

    dirs = [calibration_dirs] if isinstance(calibration_dirs, Path) else list(calibration_dirs)
    runs = []
    for round_no, d in enumerate(dirs, start=1):
        # no run in this round (yet): the error below names the first cell
        with contextlib.suppress(RunsError):
            runs += [(round_no, r) for r in load_runs(discover_runs([str(d)]))]
    cells = [dict(cell) for cell in spec.grid] or [{}]
    found = Calibration([], [], [], [])
    for i, cell in enumerate(cells):
        best, best_loss, best_run, tried = None, math.inf, None, []
        for round_no, r in runs:
            ended = r.status == "completed" or r.status.startswith("failed")
            if not ended or not _run_matches(r.recipe, cell, source):
                continue  # a stopped run is trained again by its round
            loss = r.final(VAL_LOSS) if r.status == "completed" else None
            value = r.recipe.get(rep.calibrate)
            found.table.append(
                {
                    "cell": i,
                    "recipe": r.recipe.get("name"),
                    rep.calibrate: value,
                    "val/loss": loss,
                    "status": r.status,
                    "round": round_no,
                    "run": r.path.name,
                }
            )
            if value not in tried:
                tried.append(value)
            if loss is not None and loss < best_loss:
                best, best_loss, best_run = value, loss, r.path
        if best is None or best_run is None:
            raise SweepError(f"calibration of grid cell {i} {cell} has no completed run with a val/loss")
        found.chosen.append(best)
        found.best_runs.append(best_run)
        found.tried.append(tried)
    return found


def _run_matches(recipe: dict[str, Any], cell: dict[str, Any], source: Path) -> bool:
    """Whether a run (its flattened recipe) ran grid cell ``cell`` of the study file ``source``."""
    from mosaics_lab.sweeps.spec import RECIPE_KEY, SIZES_KEY

    for key, value in cell.items():
        if key in (RECIPE_KEY, SIZES_KEY):
            # the recipe's own keys (name, arch) and the others below tell the cells apart; a cell's
            # per-size values are matched once `at_size` has merged them (reproduce does)
            continue
        if recipe.get(key) != value:
            return False
    want = cell.get(RECIPE_KEY)
    if want is None:
        return True
    from mosaics_lab.config.loader import load_recipe

    return recipe.get("name") == load_recipe(source.parent / str(want)).name


# --- running ---------------------------------------------------------------------------------------


def size_overrides(spec: SweepSpec, size: str) -> list[str]:
    """The size's overrides as ``key=value`` items (what ``resolve_sweep(size=)`` applies)."""
    return [format_override(k, v) for k, v in (spec.sizes.get(size) or {}).items()]


def run_sweep_spec(
    path: Path, spec: SweepSpec, size: str, overrides: list[str], jobs: int, quiet: bool
) -> int:
    """Run (or continue) one sweep of the study exactly as `mosaics-lab sweep FILE --size SIZE` runs
    a file: its own storage under <output_root>/<study>/, a training subprocess per trial, the
    sweep's summary and plots, a progress bar (unless quiet)."""
    import warnings

    import optuna

    from mosaics_lab.sweeps.cli import launch
    from mosaics_lab.sweeps.spec import resolve_sweep

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    sweep = resolve_sweep(path, overrides, spec=spec, size=size)
    return launch(sweep, jobs=jobs, quiet=quiet)[0]


def evaluate_trials(
    run_dirs: list[Path], rep: ReproduceSpec, size: str, source: Path, quiet: bool
) -> list[str]:
    """Every eval job on every completed run below ``run_dirs`` that lacks it; returns the failures
    (one line each)."""
    from mosaics_lab.analysis.runs import discover_runs, load_runs
    from mosaics_lab.evaluation.runner import EvalOptions, eval_name, evaluate

    batches = _per_size(rep.eval_batches, size, "reproduce.eval_batches", source) if rep.eval_batches else 16
    batch_size = rep.eval_batch_size.get(size, 16)
    failures = []
    for run in load_runs(discover_runs([str(p) for p in run_dirs])):
        if run.status != "completed":
            continue
        for job in rep.evaluate:
            if job.archs and run.recipe.get("model.arch") not in job.archs:
                continue
            name = eval_name(job.task, job.ablate)
            if (run.path / "eval" / f"{name}.json").is_file():
                continue
            options = EvalOptions(
                batches=int(batches),
                batch_size=batch_size,
                task_args=dict(job.task_args),
                ablate=job.ablate,
                progress=not quiet,
            )
            if job.lengths:
                options.lengths = job.lengths
            if job.shots:
                options.shots = job.shots
            try:
                evaluate(run.path, job.task, options)
            except Exception as exc:  # one bad evaluation must not lose the others
                failures.append(f"{run.path}: eval {name}: {type(exc).__name__}: {exc}")
    return failures


def report_spec(rep: ReproduceSpec, size: str) -> Any:
    from mosaics_lab.analysis.study import Gate, ReportSpec
    from mosaics_lab.evaluation.runner import eval_name

    group_by = list(rep.group_by) + ([rep.axis.key] if rep.axis else [])
    return ReportSpec(
        title=rep.title,
        claim=rep.claim,
        published=rep.published,
        notes=rep.notes,
        reading=rep.reading.get(size, ""),
        group_by=group_by,
        axis=rep.axis.key if rep.axis else None,
        select=rep.calibrate,
        evals=list(dict.fromkeys(eval_name(j.task, j.ablate) for j in rep.evaluate)),
        gate=Gate(**dataclasses.asdict(rep.gate)),
    )


def report_path(study: str, size: str, out_root: Path) -> Path:
    name = study.removeprefix("reproduce_")
    if size == SMOKE:
        return out_root / study / "report" / f"{name}.md"
    return REPORT_DIR / f"{name}.md"


def reproduce(args: argparse.Namespace) -> int:
    from mosaics_lab.analysis.study import collect, read_results, write_report

    source = study_path(args.study)
    spec = load_sweep_spec(source)
    rep = parse_reproduce(dict(spec.reproduce or {}), str(source))
    if args.size not in spec.sizes:
        raise SweepError(f"{source}: no size {args.size!r}; sizes: {', '.join(spec.sizes) or 'none'}")
    spec = at_size(spec, args.size)  # each cell's own values at this size join the cell
    out_root = Path(args.out or spec.output_root)
    spec.output_root = str(out_root)
    rspec = report_spec(rep, args.size)
    out_md = report_path(spec.study, args.size, out_root)  # type: ignore[arg-type]
    if args.report_only:
        stored = out_md.with_name(f"{out_md.stem}_results.json")
        if not stored.is_file():
            raise SweepError(f"--report-only: no stored results at {stored}; run the study first")
        written = write_report(read_results(stored), rspec, out_md)
        print(f"wrote {written['md']} from {stored}")
        return 0
    started = time.time()
    say = (
        (lambda msg: None)
        if args.quiet
        else (lambda msg: print(f"[reproduce {spec.study}] {msg}", flush=True))
    )
    if args.save_state:
        return save_reproduction(Path(args.save_state), spec, rep, args, source, out_root, say)
    if args.resume_from:
        from mosaics_lab.sweeps.state import restore_state

        restore_state(Path(args.resume_from), out_root, str(spec.study), args.size, say)
    cal = calibration_spec(spec, rep, args.size, source)
    say(f"1/4 calibrate {rep.calibrate} on seed {cal.seeds[0] if cal.seeds else 'recipe'}: study {cal.study}")
    code = run_sweep_spec(source, cal, args.size, args.overrides, args.jobs, args.quiet)
    if code != 0:
        say(f"calibration ended with exit code {code}; re-run the same command to continue it")
        return code
    cal_dirs = [out_root / cal.study]
    while True:
        found = choose(cal_dirs, spec, rep, source)
        todo = found.next_values(list(rep.calibrate_beyond.get(args.size, [])))
        if not todo:
            break
        ext = calibration_round_spec(spec, rep, args.size, source, todo, len(cal_dirs) + 1)
        say(
            f"1/4 calibration round {len(cal_dirs) + 1}: a best {rep.calibrate} at an edge of the values "
            f"tried; trying {', '.join(f'cell {i}: {v}' for i, v in todo)} (study {ext.study})"
        )
        code = run_sweep_spec(source, ext, args.size, args.overrides, args.jobs, args.quiet)
        if code != 0:
            say(f"calibration ended with exit code {code}; re-run the same command to continue it")
            return code
        cal_dirs.append(out_root / ext.study)
    chosen = found.chosen
    main = main_spec(spec, rep, args.size, chosen, source)
    main.study = main_study_name(spec.study, len(cal_dirs))  # type: ignore[arg-type]
    # After extra calibration rounds the grid may differ from an earlier main study's: its finished
    # runs at the values kept now are reused, the rest is trained in a study of its own.
    earlier = [out_root / main_study_name(spec.study, k) for k in range(1, len(cal_dirs))]  # type: ignore[arg-type]
    main.grid, reused_main = reuse_finished(main.grid, earlier, source)
    say(f"2/4 main study {main.study} at {rep.calibrate} = {chosen} (first seed: the calibration runs)")
    if main.grid:
        code = run_sweep_spec(source, main, args.size, args.overrides, args.jobs, args.quiet)
        if code != 0:
            say(f"main study ended with exit code {code}; re-run the same command to continue it")
            return code
    reused = found.best_runs + reused_main
    run_dirs = [p for p in [out_root / main.study] if p.is_dir()] + reused  # type: ignore[operator]
    say("3/4 evaluate every completed trial on the test split")
    failures = evaluate_trials(run_dirs, rep, args.size, source, args.quiet)
    for line in failures:
        print(f"mosaics-lab: {line}", file=sys.stderr)
    meta = {
        "study": spec.study,
        **_provenance(args),
        # every run trained for the study, across sittings: all calibration rounds, every main study
        "wall_time_s": _wall_time(out_root, *(d.name for d in [*cal_dirs, *earlier, out_root / main.study])),
        "this_sitting_s": round(time.time() - started, 1),
        "calibration": found.table,
        "chosen": chosen,
        "not_bracketed": found.edges([_cell_label(c) for c in spec.grid or [{}]], rep.calibrate),
        "reused": [str(p) for p in reused],
    }
    results = collect(run_dirs, rspec, meta)
    written = write_report(results, rspec, out_md)
    say(f"4/4 wrote {written['md']} ({len(written['figures'])} figures)")
    return 1 if failures else 0


def save_reproduction(
    target: Path,
    spec: SweepSpec,
    rep: ReproduceSpec,
    args: argparse.Namespace,
    source: Path,
    out_root: Path,
    say: Any,
) -> int:
    """``--save-state``: settle the journals, evaluate every finished run that lacks an evaluation (the
    archive keeps no weights), write the archive (``sweeps.state``). Trains nothing."""
    from mosaics_lab.sweeps.state import save_state, settle_trials, study_dirs

    folders = study_dirs(out_root, str(spec.study))
    for folder in folders:
        settle_trials(folder, spec, say)
    failures = evaluate_trials(folders, rep, args.size, source, args.quiet) if folders else []
    for line in failures:
        print(f"mosaics-lab: {line}", file=sys.stderr)
    save_state(out_root, str(spec.study), target, _provenance(args), say)
    size_kib = target.stat().st_size / 1024
    say(f"wrote {target} ({size_kib:.0f} KiB); continue with --resume-from {target}")
    if failures:
        print(
            "mosaics-lab: the runs above have no evaluation in the archive; where it is restored they "
            "cannot be evaluated (no checkpoint): fix the evaluation and save again from here",
            file=sys.stderr,
        )
    return 1 if failures else 0


def _provenance(args: argparse.Namespace) -> dict[str, Any]:
    """The size, the command that reruns the reproduction, and the machine it ran on."""
    command = [args.study, "--size", args.size, *args.overrides]
    return {
        "size": args.size,
        "command": "mosaics-lab reproduce " + " ".join(shlex.quote(a) for a in command),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }


def _cell_label(cell: dict[str, Any]) -> str:
    from mosaics_lab.sweeps.spec import RECIPE_KEY

    recipe = cell.get(RECIPE_KEY)
    return Path(str(recipe)).stem if recipe else json.dumps(cell, sort_keys=True, default=str)


def _wall_time(out_root: Path, *studies: str) -> float:
    """Training wall time summed over both studies' trials (what the reproduction cost, across sittings)."""
    total = 0.0
    for study in studies:
        for summary in (out_root / study).glob("trial-*/summary.json"):
            try:
                total += float(json.loads(summary.read_text()).get("wall_time_s") or 0.0)
            except (ValueError, OSError):
                continue
    return round(total, 1)


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "reproduce",
        help="rerun one paper claim: calibrate, train, evaluate, report (resumable)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("study", help="a study name (sweeps/reproduce/<name>.yaml) or a study file")
    p.add_argument("overrides", nargs="*", help="key.path=value recipe overrides for every trial")
    p.add_argument(
        "--size", default="cpu", help="smoke | cpu | gpu: the budgets of the study file (default cpu)"
    )
    p.add_argument(
        "--jobs", "-j", type=int, default=1, help="trials at once (default 1: one training at a time)"
    )
    p.add_argument("--out", default=None, help="output root of the studies' runs (default: the file's, runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-trial lines")
    state = p.add_mutually_exclusive_group()
    state.add_argument(
        "--report-only", action="store_true", help="re-render the report from its stored results"
    )
    state.add_argument(
        "--save-state",
        metavar="FILE.tar.gz",
        help="evaluate the finished runs, then write the reproduction's state without weights (journals, "
        "recipes, metrics, evaluations) to FILE; trains nothing",
    )
    state.add_argument(
        "--resume-from",
        metavar="FILE.tar.gz",
        help="restore a --save-state archive under the output root (folders already there are kept), "
        "then continue the reproduction",
    )
    p.set_defaults(func=run_reproduce_cli)
    from mosaics_lab.sweeps.cli import IntermixedParser

    p.__class__ = IntermixedParser  # key=value overrides after the options too, as `sweep` takes them


def run_reproduce_cli(args: argparse.Namespace) -> int:
    try:
        return reproduce(args)
    except KeyboardInterrupt:
        print("mosaics-lab: interrupted; re-run the same command to continue", file=sys.stderr)
        return 130
