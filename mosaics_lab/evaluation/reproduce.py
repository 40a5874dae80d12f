"""``make reproduce-icl``: train Memory Mosaics v1, v2 and a llama transformer on MQAR and RegBench
with the same budget and the same learning-rate search, evaluate each, and write ``reports/icl.md``
(plus ``reports/icl_table.md`` and the PNGs it shows).

    python -m mosaics_lab.evaluation.reproduce [--steps 250] [--lrs 0.003,0.01] [--jobs 2] ...

Protocol (identical for every architecture; nothing is tuned per architecture):
- recipes ``recipes/icl/<task>_<arch>.yaml`` (parameter-matched within 2 % to mosaic_v1's count);
- every run gets the same overrides: ``train.max_steps``, batch size, warmup = 10 % of the steps,
  validation at the middle and the end, and one learning rate of the grid ``--lrs``;
- the learning rate kept for an architecture is the one with the lowest final ``val/loss`` (the
  validation split, never the test split), and only that run is evaluated on the task's test split
  (``mosaics-lab eval``: accuracy, and TVD for RegBench).

Every training and evaluation is a ``mosaics-lab`` subprocess with one intra-op thread, ``--jobs`` at
a time (default 2, one per core). Why not one process with two threads: these models are small
enough that OpenMP threads spend their time waiting for each other, and on a machine shared with
other work a two-thread process runs several times slower than two one-thread processes (measured
while writing this: 5x on a loaded 2-core box). Runs go to ``runs/reproduce_icl/<task>/<arch>/lr<lr>/``
and are started fresh each time (``--resume`` keeps finished runs), so the wall time is real.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mosaics_lab import constants as C

REPO = Path(__file__).resolve().parents[2]
TASKS = ("mqar", "regbench")
ARCHS = ("mosaic_v1", "mosaic_v2", "llama")
SLOWEST_FIRST = ("mosaic_v2", "mosaic_v1", "llama")  # measured step times on CPU
DEFAULT_LRS = "0.003,0.01"
# 12 runs (3 archs x 2 tasks x 2 lrs), 2 at a time: ~20 min on a 2-core machine shared with other work
# (measured at load average ~6: 0.3 / 0.65 / 0.85 s per step for llama / mosaic_v1 / mosaic_v2).
DEFAULT_STEPS = 250
REPORT = "icl.md"
RESULTS = "icl_results.json"  # everything the report is written from (``--report-only`` re-reads it)
TABLE = "icl_table.md"
ACCURACY_PNG = "icl_accuracy.png"
CURVES_PNG = "icl_training.png"
# What the papers report, quoted next to the measurement (MODELS.md section 4; Zoology for MQAR).
PUBLISHED = {
    "mqar": "Zoology (Arora et al. 2023; not in MODELS.md): 2-layer attention reaches ~1.0 accuracy on "
    "MQAR at these lengths and key-value counts with vocab 8192, trained on 100k+ examples for many epochs",
    "regbench": "Memory Mosaics v1 (d 128, 8 heads, 2 layers, S = 448): with 100 to 1,000 training "
    "languages MM ~0.93 accuracy, a same-size transformer ~0.53; both ~0.95 at 40k languages",
}


class ReproduceError(ValueError):
    """A reproduction that cannot start as asked; the message says what to change."""


@dataclass
class Job:
    task: str
    arch: str
    lr: float
    run_dir: Path
    log: Path
    returncode: int | None = None
    wall_s: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def val_loss(self) -> float | None:
        value = self.summary.get("metrics", {}).get(C.VAL_LOSS)
        return float(value) if value is not None else None


# --- running the mosaics-lab subprocesses --------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    return env


def _run_cli(argv: Sequence[str], log: Path) -> tuple[int, float]:
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(log, "w") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "mosaics_lab.cli", *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(),
            cwd=REPO,
        )
    return proc.returncode, time.time() - started


def recipe_path(task: str, arch: str) -> Path:
    return REPO / "recipes" / "icl" / f"{task}_{arch}.yaml"


def budget_overrides(steps: int, batch_size: int) -> list[str]:
    """The budget every run gets, whatever its architecture."""
    return [
        f"train.max_steps={steps}",
        f"train.global_batch_size={batch_size}",
        f"train.micro_batch_size={batch_size}",
        f"train.warmup_steps={max(1, steps // 10)}",
        f"eval.every_n_steps={max(1, steps // 2)}",
        f"log.checkpoint_every_n_steps={steps}",
        "log.progress_bar=false",
    ]


def _train(job: Job, overrides: list[str]) -> Job:
    argv = [
        "train",
        str(recipe_path(job.task, job.arch)),
        *overrides,
        f"train.lr={job.lr}",
        f"log.run_dir={job.run_dir}",
    ]
    job.returncode, job.wall_s = _run_cli(argv, job.log)
    summary = job.run_dir / C.SUMMARY_FILE
    if summary.is_file():
        job.summary = json.loads(summary.read_text())
    status = "ok" if job.returncode == 0 else f"FAILED (exit {job.returncode}, see {job.log})"
    print(
        f"  trained {job.task:9s} {job.arch:10s} lr {job.lr:g}: val/loss {job.val_loss} "
        f"in {job.wall_s:.0f}s {status}",
        flush=True,
    )
    return job


def _evaluate(task: str, run_dir: Path, batches: int, batch_size: int) -> tuple[dict[str, Any] | None, float]:
    log = run_dir / f"eval_{task}.log"
    code, wall = _run_cli(
        ["eval", str(run_dir), "--task", task, "--batches", str(batches), "--batch-size", str(batch_size)],
        log,
    )
    path = run_dir / "eval" / f"{task}.json"
    if code != 0 or not path.is_file():
        print(f"  eval {task} of {run_dir} FAILED (exit {code}, see {log})", flush=True)
        return None, wall
    return json.loads(path.read_text()), wall


# --- the protocol ----------------------------------------------------------------------------------------


def reproduce(
    out: Path,
    runs_root: Path,
    steps: int,
    lrs: Sequence[float],
    batch_size: int,
    jobs: int,
    eval_batches: int,
    extra_overrides: Sequence[str] = (),
    tasks: Sequence[str] = TASKS,
    archs: Sequence[str] = ARCHS,
    resume: bool = False,
) -> dict[str, Any]:
    """Run the protocol of the module docstring; returns the results the report is written from."""
    from mosaics_lab.config import load_recipe
    from mosaics_lab.data import ensure_prepared
    from mosaics_lab.training.run import resolve_recipe

    started = time.time()
    load_start = os.getloadavg()[0]
    overrides = [*budget_overrides(steps, batch_size), *extra_overrides]
    if not resume and runs_root.exists():
        shutil.rmtree(runs_root)

    # Validate every recipe and prepare each task's data once, here, before the parallel runs.
    params: dict[tuple[str, str], int] = {}
    data_s = {}
    for task in tasks:
        t0 = time.time()
        for arch in archs:
            recipe = load_recipe(recipe_path(task, arch), overrides)
            if arch == archs[0]:
                # the runs resolve data.path from the repository root (their working directory)
                ensure_prepared(dataclasses.replace(recipe.data, path=str(REPO / recipe.data.path)))
            params[(task, arch)] = _param_count(resolve_recipe(recipe).model)
        data_s[task] = time.time() - t0
        print(f"data for {task}: ready in {data_s[task]:.0f}s", flush=True)

    train_jobs = [
        Job(
            task,
            arch,
            lr,
            runs_root / task / arch / f"lr{lr:g}",
            runs_root / "logs" / f"{task}_{arch}_lr{lr:g}.log",
        )
        for task in tasks
        for arch in archs
        for lr in lrs
    ]
    # The slowest architecture first, so that the workers finish together.
    order = sorted(train_jobs, key=lambda j: SLOWEST_FIRST.index(j.arch))
    print(
        f"training {len(train_jobs)} runs, {jobs} at a time ({steps} steps of {batch_size} each)", flush=True
    )
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(lambda j: _train(j, overrides), order))

    best: dict[tuple[str, str], Job] = {}
    for job in train_jobs:
        key = (job.task, job.arch)
        ran = job.returncode == 0 and job.val_loss is not None
        if ran and (key not in best or job.val_loss < best[key].val_loss):
            best[key] = job

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        evals = dict(
            zip(
                best,
                pool.map(lambda j: _evaluate(j.task, j.run_dir, eval_batches, batch_size), best.values()),
            )
        )

    rows = []
    for task in tasks:
        for arch in archs:
            runs = [j for j in train_jobs if (j.task, j.arch) == (task, arch)]
            chosen = best.get((task, arch))
            record, eval_s = evals.get((task, arch), (None, 0.0))
            metrics = (record or {}).get("metrics", {})
            rows.append(
                {
                    "task": task,
                    "arch": arch,
                    "params": params[(task, arch)],
                    "lr_val_loss": {f"{j.lr:g}": j.val_loss for j in runs},
                    "failed": [f"{j.lr:g}" for j in runs if j.returncode != 0],
                    "best_lr": chosen.lr if chosen else None,
                    "val_loss": chosen.val_loss if chosen else None,
                    "accuracy": metrics.get("accuracy"),
                    "tvd": metrics.get("tvd"),
                    "chance": (record or {}).get("info", {}).get("chance"),
                    "test_examples": (record or {}).get("info", {}).get("num_examples"),
                    "train_s": sum(j.wall_s for j in runs),
                    "run_train_s": [j.summary.get("wall_time_s") for j in runs],
                    "eval_s": eval_s,
                    "run_dir": str(chosen.run_dir) if chosen else None,
                    "task_config": (record or {}).get("info", {}).get("task_config"),
                }
            )
    results = {
        "rows": rows,
        "steps": steps,
        "batch_size": batch_size,
        "lrs": list(lrs),
        "jobs": jobs,
        "eval_examples": eval_batches * batch_size,
        "data_s": data_s,
        "wall_s": time.time() - started,
        "loadavg": [load_start, os.getloadavg()[0]],
        "machine": _machine(),
        "overrides": overrides,
        "runs_root": str(runs_root),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS).write_text(json.dumps(results, indent=2, default=str) + "\n")
    write_report(results, out)
    return results


def _param_count(model_cfg: Any) -> int:
    from mosaics_lab.training.matching import count_params

    return count_params(model_cfg)


def _machine() -> dict[str, Any]:
    import torch

    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "git_sha": sha or None,
    }


# --- the report -----------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def results_table(results: dict[str, Any]) -> str:
    """The measured table, in Markdown (also written alone to ``icl_table.md``)."""
    lines = [
        "| task | architecture | params | lr (best of grid) | val loss | test accuracy | test TVD "
        "| train wall (sum of its lr runs) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        lr = f"{row['best_lr']:g}" if row["best_lr"] is not None else "failed"
        lines.append(
            f"| {row['task']} | {row['arch']} | {row['params']:,} | {lr} | {_fmt(row['val_loss'])} | "
            f"{_fmt(row['accuracy'])} | {_fmt(row['tvd'])} | {row['train_s']:.0f} s |"
        )
    return "\n".join(lines)


def _findings(results: dict[str, Any]) -> list[str]:
    """Plain statements read off the numbers (no claims the numbers do not carry)."""
    out = []
    for task in dict.fromkeys(r["task"] for r in results["rows"]):
        rows = [r for r in results["rows"] if r["task"] == task and r["accuracy"] is not None]
        if not rows:
            out.append(f"- **{task}**: no architecture finished its evaluation.")
            continue
        ranked = sorted(rows, key=lambda r: -r["accuracy"])
        listing = ", ".join(f"{r['arch']} {r['accuracy']:.3f}" for r in ranked)
        line = f"- **{task}** test accuracy: {listing}"
        chance = ranked[0].get("chance")
        if chance:
            n = ranked[0].get("test_examples") or 0
            line += f" (chance, one of the {round(1 / chance)} values in context: {chance:.3f}"
            line += f"; {n} test prompts)" if n else ")"
        if task == "regbench":
            tvd = ", ".join(f"{r['arch']} {r['tvd']:.3f}" for r in sorted(rows, key=lambda r: r["tvd"]))
            line += f"; TVD to the automaton's next-symbol distribution (lower is better): {tvd}"
        gap = ranked[0]["accuracy"] - ranked[-1]["accuracy"]
        line += f". Spread between best and worst: {gap:.3f}."
        out.append(line)
        config = ranked[0].get("task_config") or {}
        if task == "mqar" and config.get("vocab_size"):
            # A model that knows which ids are values but not which value a key is bound to predicts
            # uniformly over the V / 2 value ids: its loss at the queries is ln(V / 2).
            floor = math.log(config["vocab_size"] // 2)
            losses = ", ".join(f"{r['arch']} {r['val_loss']:.3f}" for r in rows if r["val_loss"] is not None)
            out.append(
                f"- **mqar** validation loss at the queries: {losses}; a uniform guess over the "
                f"{config['vocab_size'] // 2} value ids scores ln {config['vocab_size'] // 2} = {floor:.3f}."
            )
    sequences = results["steps"] * results["batch_size"]
    out.append(
        f"- These are results at a {results['steps']}-step budget ({sequences:,} "
        "training sequences per run): they say which architecture learns each task from that much data, not "
        "which can represent it."
    )
    return out


def write_report(results: dict[str, Any], out: Path) -> Path:
    """``icl.md``, ``icl_table.md`` and the two PNGs, from ``results`` (see ``reproduce``)."""
    table = results_table(results)
    wall_min = results["wall_s"] / 60
    caption = (
        f"Measured by `make reproduce-icl` on {results['machine']['cpus']} CPU cores ({results['jobs']} "
        f"one-thread runs at a time): {results['steps']} steps x {results['batch_size']} sequences per run, "
        "learning rates "
        f"{', '.join(f'{lr:g}' for lr in results['lrs'])} for every architecture, best by validation loss; "
        f"total wall time {wall_min:.1f} min."
    )
    (out / TABLE).write_text(f"{table}\n\n{caption}\n")
    _plot_accuracy(results, out / ACCURACY_PNG)
    _plot_training(results, out / CURVES_PNG)

    rows = results["rows"]
    configs = {r["task"]: r["task_config"] for r in rows if r["task_config"]}
    lr_lines = [
        f"| {r['task']} | {r['arch']} | "
        + " | ".join(_fmt(r["lr_val_loss"].get(f"{lr:g}")) for lr in results["lrs"])
        + " |"
        for r in rows
    ]
    lr_header = (
        "| task | architecture | " + " | ".join(f"val loss @ lr {lr:g}" for lr in results["lrs"]) + " |"
    )
    lr_rule = "|---|---|" + "---:|" * len(results["lrs"])
    failed = [f"{r['task']}/{r['arch']} lr {lr}" for r in rows for lr in r["failed"]]
    m = results["machine"]
    steps, batch, load = results["steps"], results["batch_size"], results["loadavg"]
    data_times = ", ".join(f"{t} data {s:.0f} s" for t, s in results["data_s"].items())
    text = f"""# In-context learning on CPU: Memory Mosaics v1 / v2 vs llama on MQAR and RegBench

Generated by `make reproduce-icl` (`python -m mosaics_lab.evaluation.reproduce`); do not edit by hand,
re-run it. Git {m["git_sha"]}, torch {m["torch"]}, Python {m["python"]}, {m["platform"]}.

## Result

{table}

{caption}

![test accuracy per architecture]({ACCURACY_PNG})

What the numbers show:

{chr(10).join(_findings(results))}

Published numbers for comparison (different scale: the papers train far longer, at larger widths and
on more data; this is a CPU-sized run, so only the ordering and the distance from chance are
comparable):

{chr(10).join(f"- {task}: {text}" for task, text in PUBLISHED.items() if task in configs)}

## Protocol

- Tasks (test split: prompts and, for RegBench, languages never seen in training):
{chr(10).join(f"  - `{task}`: `{json.dumps(cfg)}`" for task, cfg in configs.items())}
- MQAR runs at Zoology's sequence length and number of key-value pairs (256, 16), but with a
  256-token vocabulary instead of 8192: on 2 cores the 8192-way classifier alone makes each step about
  6x slower, which this time budget cannot afford.
- RegBench is CPU-sized: 500 training languages (the regime where the v1 paper reports the gap) and
  256-token prompts instead of 448 / 512, published automaton generator otherwise.
- Models: `recipes/icl/<task>_<arch>.yaml`: 2 layers, width 64, 4 heads, tied embeddings; mosaic_v2 and
  llama widen or narrow their feed-forward width to mosaic_v1's parameter count (within 2 %).
  mosaic_v2 windows scaled to T = 256 (STM 64, LTM delay 16..64, 16 at evaluation).
- Budget, identical for every architecture: {steps} optimiser steps of {batch} sequences
  (warmup 10 %, cosine to 10 %, AdamW wd 0.1, grad clip 1), learning rate grid
  {", ".join(f"{lr:g}" for lr in results["lrs"])}; the run with the lowest final validation loss is kept and
  evaluated once on {results["eval_examples"]} test prompts (greedy argmax, teacher-forced).
- Time: {wall_min:.1f} min end to end ({data_times});
  load average {load[0]:.1f} at the start and {load[1]:.1f} at the end (the machine
  was shared with other work, so wall times are upper bounds).
- Runs, with their TensorBoard logs and eval JSON / PNG: `{results["runs_root"]}/<task>/<arch>/lr<lr>/`.
{"- FAILED runs: " + ", ".join(failed) if failed else ""}

## Learning-rate search

{lr_header}
{lr_rule}
{chr(10).join(lr_lines)}

## Training curves (the kept learning rate)

![validation and training loss]({CURVES_PNG})
"""
    path = out / REPORT
    path.write_text(text)
    return path


def _plot_accuracy(results: dict[str, Any], path: Path) -> None:
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = results["rows"]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    archs = list(dict.fromkeys(r["arch"] for r in rows))
    fig = Figure(figsize=(6.4, 4.0), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(archs)
    for i, arch in enumerate(archs):
        values = [
            next((r["accuracy"] for r in rows if r["task"] == t and r["arch"] == arch), None) for t in tasks
        ]
        xs = np.arange(len(tasks)) + (i - (len(archs) - 1) / 2) * width
        heights = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(xs, heights, width, label=arch)
        ax.bar_label(bars, labels=[_fmt(v, 2) for v in values], fontsize=8)
    for j, task in enumerate(tasks):
        chance = next((r["chance"] for r in rows if r["task"] == task and r["chance"]), None)
        if chance:
            ax.hlines(
                chance, j - 0.45, j + 0.45, colors="gray", linestyles="--", label="chance" if j == 0 else None
            )
    ax.set_xticks(np.arange(len(tasks)))
    ax.set_xticklabels(tasks)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        f"{results['steps']} steps x {results['batch_size']}, best lr of {len(results['lrs'])} per arch",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path)


def _read_curve(run_dir: str | None, tag: str) -> tuple[list[int], list[float]]:
    if not run_dir or not (Path(run_dir) / C.METRICS_FILE).is_file():
        return [], []
    steps, values = [], []
    for line in (Path(run_dir) / C.METRICS_FILE).read_text().splitlines():
        row = json.loads(line) if line.strip() else {}
        if tag in row:
            steps.append(row["step"])
            values.append(row[tag])
    return steps, values


def _plot_training(results: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = results["rows"]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig = Figure(figsize=(6.4 * len(tasks) / 1.5, 4.0), dpi=110)
    FigureCanvasAgg(fig)
    for i, task in enumerate(tasks):
        ax = fig.add_subplot(1, len(tasks), i + 1)
        for n, row in enumerate(r for r in rows if r["task"] == task):
            color = f"C{n}"
            steps, train = _read_curve(row["run_dir"], C.TRAIN_LOSS)
            ax.plot(steps, train, color=color, alpha=0.35, linewidth=0.8)
            steps, val = _read_curve(row["run_dir"], C.VAL_LOSS)
            lr = f"{row['best_lr']:g}" if row["best_lr"] is not None else "-"
            ax.plot(steps, val, color=color, marker="o", label=f"{row['arch']} (lr {lr}) val")
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (faint: train)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


# --- command line ---------------------------------------------------------------------------------------


def _floats(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError as exc:
        raise ReproduceError(
            f"--lrs must be comma-separated numbers, e.g. {DEFAULT_LRS}; got {text!r}"
        ) from exc
    if not values or any(v <= 0 for v in values):
        raise ReproduceError(f"--lrs must be positive, got {text!r}")
    return values


def _names(text: str, valid: Sequence[str], what: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [n for n in names if n not in valid]
    if bad or not names:
        raise ReproduceError(f"--{what}: unknown {bad or text!r}; valid: {', '.join(valid)}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m mosaics_lab.evaluation.reproduce", description=__doc__.splitlines()[0]
    )
    p.add_argument("--out", default=str(REPO / "reports"), help="where icl.md, icl_table.md and the PNGs go")
    p.add_argument("--runs", default=str(REPO / "runs" / "reproduce_icl"), help="root of the runs")
    p.add_argument(
        "--steps", type=int, default=DEFAULT_STEPS, help="optimiser steps per run (default %(default)s)"
    )
    p.add_argument("--batch-size", type=int, default=16, help="sequences per step (default %(default)s)")
    p.add_argument(
        "--lrs", default=DEFAULT_LRS, help="learning-rate grid, the same for every arch (default %(default)s)"
    )
    p.add_argument(
        "--jobs", type=int, default=2, help="runs at a time, one thread each (default %(default)s)"
    )
    p.add_argument(
        "--eval-batches", type=int, default=16, help="test batches per evaluation (default %(default)s)"
    )
    p.add_argument("--tasks", default=",".join(TASKS), help="default %(default)s")
    p.add_argument("--archs", default=",".join(ARCHS), help="default %(default)s")
    p.add_argument("--resume", action="store_true", help="keep finished runs instead of starting fresh")
    p.add_argument(
        "--report-only",
        action="store_true",
        help=f"re-write the report from <out>/{RESULTS} (the last run's numbers) without training",
    )
    p.add_argument(
        "overrides", nargs="*", help="extra key=value recipe overrides for every run (e.g. for a smoke test)"
    )
    args = p.parse_args(argv)
    if args.report_only:
        saved = Path(args.out) / RESULTS
        if not saved.is_file():
            print(
                f"reproduce-icl: error: {saved} not found; run without --report-only first", file=sys.stderr
            )
            return 2
        write_report(json.loads(saved.read_text()), Path(args.out))
        print(f"report re-written from {saved}: {Path(args.out) / REPORT}")
        return 0
    try:
        if args.steps < 1 or args.batch_size < 1 or args.jobs < 1 or args.eval_batches < 1:
            raise ReproduceError("--steps, --batch-size, --jobs and --eval-batches must be >= 1")
        results = reproduce(
            Path(args.out),
            Path(args.runs),
            args.steps,
            _floats(args.lrs),
            args.batch_size,
            args.jobs,
            args.eval_batches,
            args.overrides,
            _names(args.tasks, TASKS, "tasks"),
            _names(args.archs, ARCHS, "archs"),
            args.resume,
        )
    except ValueError as exc:
        print(f"reproduce-icl: error: {exc}", file=sys.stderr)
        return 2
    print(results_table(results))
    print(f"wall time {results['wall_s'] / 60:.1f} min; report: {Path(args.out) / REPORT}")
    failed = [r for r in results["rows"] if r["failed"] or r["accuracy"] is None]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
