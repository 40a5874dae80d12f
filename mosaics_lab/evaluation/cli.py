"""``mosaics-lab eval RUN_OR_CHECKPOINT --task TASK [--lengths 1x,2x,4x,8x] [--shots 1,2,4,8,16]
[--ablate ltm|stm] ...``.

Writes ``<run>/eval/<task>.json``, ``<run>/eval/<task>.png`` and ``eval/<task>/<metric>`` scalars to
the run's TensorBoard (``<task>-no_ltm`` with ``--ablate ltm``), and prints the headline numbers (see
``runner`` for the details).
"""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from mosaics_lab.evaluation import EVAL_TASKS, LM_TASKS


class TaskArgError(ValueError):
    """A --task-arg that is not KEY=VALUE."""


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a trained run: val loss, per-position loss, extrapolation, ICL tasks",
        description=(
            "Evaluate a run directory (or a .ckpt file) on one task and record the result in the run: "
            "eval/<task>.json, eval/<task>.png and TensorBoard scalars eval/<task>/<metric>. "
            f"Tasks: {', '.join(LM_TASKS)} (on the run's own validation data) and the synthetic tasks "
            f"{', '.join(t for t in EVAL_TASKS if t not in LM_TASKS)} (on their test split, with the run's "
            "task config when it trained on that task, else the task's defaults)."
        ),
    )
    p.add_argument("run", help="run directory (runs/<name>/<id>) or checkpoint file")
    p.add_argument("--task", required=True, help=f"one of: {', '.join(EVAL_TASKS)}")
    p.add_argument(
        "--lengths",
        default="1x,2x,4x,8x",
        help="extrapolation / multidoc_qa / induction: multiples of the training (task) length, e.g. "
        "1x,2x,4x,8x, or token counts, e.g. 256,1024 (default %(default)s)",
    )
    p.add_argument(
        "--shots", default="1,2,4,8,16", help="manyshot: demonstration rounds (default %(default)s)"
    )
    p.add_argument(
        "--batches", type=int, default=16, help="batches per evaluated point (default %(default)s)"
    )
    p.add_argument("--batch-size", type=int, default=16, help="sequences per batch (default %(default)s)")
    p.add_argument(
        "--which", default="last", help="checkpoint of a run dir: last | best (default %(default)s)"
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default %(default)s)")
    p.add_argument(
        "--seed", type=int, default=None, help="seed of the task's test examples (default: data.seed)"
    )
    p.add_argument(
        "--task-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field of the synthetic task's config (repeatable), e.g. --task-arg num_kv_pairs=8",
    )
    p.add_argument(
        "--ablate",
        default=None,
        metavar="MEMORY",
        help="mosaic_v2 only: evaluate with its ltm (or stm) removed, that memory contributing zero in "
        "every block, without retraining; written as <task>-no_<memory>, beside the full model's result",
    )
    p.add_argument("--out", default=None, help="directory for the JSON and PNG (default: <run>/eval)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_eval)


def parse_task_args(items: list[str]) -> dict[str, Any]:
    """['num_kv_pairs=8', 'power_a=0.5'] -> {'num_kv_pairs': 8, 'power_a': 0.5} (values read as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TaskArgError(
                f"--task-arg {item!r} must look like KEY=VALUE, e.g. --task-arg num_kv_pairs=8"
            )
        out[key.strip()] = yaml.safe_load(value)
    return out


def run_eval(args: argparse.Namespace) -> int:
    from mosaics_lab.evaluation.runner import EvalOptions, evaluate

    options = EvalOptions(
        lengths=args.lengths,
        shots=args.shots,
        batches=args.batches,
        batch_size=args.batch_size,
        which=args.which,
        device=args.device,
        seed=args.seed,
        task_args=parse_task_args(args.task_arg),
        out_dir=args.out,
        progress=not args.quiet,
        ablate=args.ablate,
    )
    record = evaluate(args.run, args.task, options)
    print(format_record(record))
    return 0


def format_record(record: dict[str, Any]) -> str:
    """A few lines for the terminal: the headline metrics and, for sweeps, one line per point."""

    def fmt(value: Any) -> str:
        return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    removed = f" with its {record['ablate']} removed" if record.get("ablate") else ""
    lines = [
        f"{record['task']} on {record['run_dir']} (step {record['global_step']}, {record['arch']}){removed}:"
    ]
    for name, value in record["metrics"].items():
        lines.append(f"  {name}: {fmt(value)}")
    axis = record["axis"]
    if axis and axis != "position":
        for point in record["points"]:
            shown = ", ".join(f"{k} {fmt(v)}" for k, v in point["metrics"].items())
            note = f"  ({point['reason']})" if point["status"] != "ok" else ""
            lines.append(f"  {axis} {point[axis]}: {shown if point['status'] == 'ok' else 'n/a'}{note}")
    for name, text in (record.get("info") or {}).get("definitions", {}).items():
        lines.append(f"  ({name}: {text})")
    lines.append(f"  -> {record['files']['json']}, {record['files']['png']}")
    return "\n".join(lines)
