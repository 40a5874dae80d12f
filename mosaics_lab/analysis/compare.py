"""``mosaics-lab compare RUNS_OR_GLOBS... [--metric TAG ...] [--out DIR]``.

Reads run dirs (single runs and sweep trials alike; a folder of runs is expanded) and writes a table
of final metrics and of the hyperparameters that differ across the runs (``compare.md``,
``compare.csv``, also printed), and one PNG per chosen metric with its curve vs step for every run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mosaics_lab import constants as C
from mosaics_lab.analysis.runs import Run, discover_runs, load_runs
from mosaics_lab.analysis.tables import markdown_table, write_csv

DEFAULT_METRICS = (C.TRAIN_LOSS, C.VAL_LOSS)
# Keys that differ between runs without describing the experiment (where and how often it logged).
IGNORED_PREFIXES = ("log.",)
COMPARE_MD = "compare.md"
COMPARE_CSV = "compare.csv"


def differing_keys(runs: Sequence[Run]) -> list[str]:
    """Flattened recipe keys whose value is not the same in every run, in recipe order."""
    keys = dict.fromkeys(k for r in runs for k in r.recipe)
    out = []
    for key in keys:
        if key.startswith(IGNORED_PREFIXES):
            continue
        seen = {json.dumps(r.recipe.get(key), sort_keys=True, default=str) for r in runs}
        if len(seen) > 1:
            out.append(key)
    return out


def comparison_rows(runs: Sequence[Run], metrics: Sequence[str]) -> tuple[list[dict[str, Any]], list[str]]:
    hparams = differing_keys(runs)
    columns = ["run", "status", "step", "params", *metrics, *hparams]
    rows = []
    for r in runs:
        row: dict[str, Any] = {
            "run": r.label,
            "status": r.status,
            "step": r.step,
            "params": r.meta.get("params"),
        }
        row.update({m: r.final(m) for m in metrics})
        row.update({k: r.recipe.get(k) for k in hparams})
        rows.append(row)
    return rows, columns


def slug(tag: str) -> str:
    return tag.replace("/", "_").replace(" ", "_")


def plot_scalars(runs: Sequence[Run], metrics: Sequence[str], out_dir: Path) -> tuple[list[Path], list[str]]:
    """One PNG per metric: its curve vs step for every run that logged it. Returns (written, notes)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: works on headless machines
    import matplotlib.pyplot as plt

    written, notes = [], []
    for tag in metrics:
        curves = [(r.label, r.series(tag)) for r in runs]
        curves = [(label, pts) for label, pts in curves if pts]
        if not curves:
            notes.append(f"{tag}: no run logged it; not plotted")
            continue
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for label, pts in curves:
            steps, values = zip(*pts)
            ax.plot(steps, values, label=label, marker="o" if len(pts) <= 20 else None, markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel(tag)
        ax.set_title(f"{tag} across {len(curves)} run(s)")
        ax.grid(alpha=0.3)
        if len(curves) <= 12:
            ax.legend(fontsize=8)
        else:  # many trials: a legend outside the axes
            ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + len(curves) // 30)
        path = out_dir / f"{slug(tag)}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written, notes


def default_out_dir(runs: Sequence[Run]) -> Path:
    """``<the runs' common folder>/compare`` (e.g. runs/<study>/compare for a sweep's trials)."""
    parents = [str(r.path.resolve().parent) for r in runs]
    common = Path(os.path.commonpath(parents))
    cwd = Path.cwd()
    common = common.relative_to(cwd) if common.is_relative_to(cwd) else common
    return common / "compare"


def compare(
    patterns: list[str],
    metrics: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Compare the runs named by ``patterns``; writes the table and plots, returns what it wrote."""
    runs = load_runs(discover_runs(patterns))
    if not metrics:
        metrics = [m for m in DEFAULT_METRICS if any(r.series(m) or r.final(m) is not None for r in runs)]
        metrics = metrics or [C.TRAIN_LOSS]
    rows, columns = comparison_rows(runs, metrics)
    out = Path(out_dir) if out_dir else default_out_dir(runs)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows, columns)
    written, notes = plot_scalars(runs, metrics, out) if plots else ([], [])
    md = [f"# Comparison of {len(runs)} run(s)", "", table.rstrip(), ""]
    md += [f"![{p.stem}]({p.name})" for p in written]
    md += [f"- {n}" for n in notes]
    (out / COMPARE_MD).write_text("\n".join(md) + "\n")
    write_csv(out / COMPARE_CSV, rows, columns)
    return {"runs": runs, "table": table, "out": out, "plots": written, "notes": notes}


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare",
        help="table of final metrics and hparams across runs, and plots of their curves",
        description=__doc__.splitlines()[2] if __doc__ else None,
    )
    p.add_argument("runs", nargs="+", help="run dirs, folders of runs (e.g. a sweep's), or globs")
    p.add_argument(
        "--metric",
        "-m",
        action="append",
        default=None,
        help=f"scalar tag to tabulate and plot (repeatable; default {', '.join(DEFAULT_METRICS)})",
    )
    p.add_argument("--out", default=None, help="output folder (default: <the runs' common folder>/compare)")
    p.add_argument("--no-plots", action="store_true", help="write the table only")
    p.set_defaults(func=run_compare_cli)


def run_compare_cli(args: argparse.Namespace) -> int:
    result = compare(args.runs, args.metric, args.out, plots=not args.no_plots)
    sys.stdout.write(result["table"])
    for note in result["notes"]:
        print(note)
    shown = ", ".join(p.name for p in result["plots"]) or "none"
    print(f"\nwrote {result['out'] / COMPARE_MD}, {result['out'] / COMPARE_CSV}; plots: {shown}")
    return 0
