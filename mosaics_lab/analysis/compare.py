"""``mosaics-lab compare RUNS_OR_GLOBS... [--metric TAG ...] [--by KEY ...] [--out DIR]``.

Reads run dirs (single runs and sweep trials alike, from any number of sweeps; a folder of runs is
expanded) and writes a table of final metrics and of the hyperparameters that differ across the runs
(``compare.md``, ``compare.csv``, also printed; hyperparameters with 3 significant digits), and one PNG
per chosen metric with its curve vs step for every run. With ``--by KEY`` (repeatable) the runs are
also grouped by the values of those recipe keys: one row per group with its runs, seeds and the mean
and std of each metric's final value (``compare_groups.csv``), and one PNG per metric with each
group's mean curve and a +-std band (``<metric>_by_<keys>.png``).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mosaics_lab import constants as C
from mosaics_lab.analysis.runs import Run, RunsError, discover_runs, load_runs
from mosaics_lab.analysis.tables import PARAM_DIGITS, markdown_table, short_value, write_csv

DEFAULT_METRICS = (C.TRAIN_LOSS, C.VAL_LOSS)
# Keys that differ between runs without describing the experiment (where and how often it logged).
IGNORED_PREFIXES = ("log.",)
COMPARE_MD = "compare.md"
COMPARE_CSV = "compare.csv"
GROUPS_CSV = "compare_groups.csv"
SEED_KEY = "seed"


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


def check_keys(runs: Sequence[Run], keys: Sequence[str]) -> None:
    """Every --by key must be a recipe key of some run; otherwise name the closest one."""
    known = list(dict.fromkeys(k for r in runs for k in r.recipe))
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise RunsError(f"--by {key!r} is not a recipe key of these runs{hint}")


def group_runs(runs: Sequence[Run], by: Sequence[str]) -> list[tuple[dict[str, Any], list[Run]]]:
    """Runs grouped by their values of the ``by`` keys, groups in first-seen order."""
    groups: dict[str, tuple[dict[str, Any], list[Run]]] = {}
    for r in runs:
        values = {k: r.recipe.get(k) for k in by}
        ident = json.dumps(values, sort_keys=True, default=str)
        groups.setdefault(ident, (values, []))[1].append(r)
    return list(groups.values())


def group_rows(
    runs: Sequence[Run], by: Sequence[str], metrics: Sequence[str]
) -> tuple[list[dict], list[str]]:
    """One row per group: the key values, how many runs, their seeds, and mean / std (sample, over
    the runs that logged it) of each metric's final value."""
    columns = [*by, "runs", "seeds"] + [f"{m} {stat}" for m in metrics for stat in ("mean", "std")]
    rows = []
    for values, members in group_runs(runs, by):
        seeds = sorted({str(r.recipe.get(SEED_KEY)) for r in members})
        row: dict[str, Any] = {**values, "runs": len(members), "seeds": ",".join(seeds)}
        for m in metrics:
            finals = [v for v in (r.final(m) for r in members) if v is not None]
            row[f"{m} mean"] = statistics.fmean(finals) if finals else None
            row[f"{m} std"] = statistics.stdev(finals) if len(finals) > 1 else None
        rows.append(row)
    return rows, columns


def group_label(values: dict[str, Any]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={short_value(v)}" for k, v in values.items())


def plot_groups(
    runs: Sequence[Run], by: Sequence[str], metrics: Sequence[str], out_dir: Path
) -> tuple[list[Path], list[str]]:
    """One PNG per metric: each group's mean curve over the steps all its runs logged, +- std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written, notes = [], []
    groups = group_runs(runs, by)
    for tag in metrics:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        drawn = 0
        for values, members in groups:
            series = [dict(r.series(tag)) for r in members]
            series = [s for s in series if s]
            if not series:
                continue
            steps = sorted(set.intersection(*(set(s) for s in series)))
            if not steps:
                continue
            ys = np.array([[s[step] for step in steps] for s in series])  # (runs, steps)
            mean = ys.mean(0)
            line = ax.plot(steps, mean, label=f"{group_label(values)} (n={len(series)})")[0]
            if len(series) > 1:
                std = ys.std(0, ddof=1)
                ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
            drawn += 1
        if not drawn:
            plt.close(fig)
            notes.append(f"{tag}: no group logged it; no grouped plot")
            continue
        ax.set_xlabel("step")
        ax.set_ylabel(f"{tag} (mean +- std over runs)")
        ax.set_title(f"{tag} by {', '.join(by)}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        path = out_dir / f"{slug(tag)}_by_{'+'.join(by)}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written, notes


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
    by: Sequence[str] = (),
) -> dict[str, Any]:
    """Compare the runs named by ``patterns``; writes the table and plots, returns what it wrote
    (``groups``: the rows of the --by table, empty without ``by``)."""
    runs = load_runs(discover_runs(patterns))
    by = list(by or ())
    check_keys(runs, by)
    if not metrics:
        metrics = [m for m in DEFAULT_METRICS if any(r.series(m) or r.final(m) is not None for r in runs)]
        metrics = metrics or [C.TRAIN_LOSS]
    rows, columns = comparison_rows(runs, metrics)
    out = Path(out_dir) if out_dir else default_out_dir(runs)
    out.mkdir(parents=True, exist_ok=True)
    hparams = {c: PARAM_DIGITS for c in columns[4 + len(metrics) :]}
    table = markdown_table(rows, columns, hparams)
    written, notes = plot_scalars(runs, metrics, out) if plots else ([], [])
    md = [f"# Comparison of {len(runs)} run(s)", "", table.rstrip(), ""]
    groups: list[dict[str, Any]] = []
    if by:
        groups, group_columns = group_rows(runs, by, metrics)
        group_table = markdown_table(groups, group_columns, {k: PARAM_DIGITS for k in by})
        table += f"\nBy {', '.join(by)} (mean and std over the runs of each group):\n\n{group_table}"
        md += [f"## By {', '.join(by)}", "", group_table.rstrip(), ""]
        write_csv(out / GROUPS_CSV, groups, group_columns)
        if plots:
            grouped, group_notes = plot_groups(runs, by, metrics, out)
            written += grouped
            notes += group_notes
    md += [f"![{p.stem}]({p.name})" for p in written]
    md += [f"- {n}" for n in notes]
    (out / COMPARE_MD).write_text("\n".join(md) + "\n")
    write_csv(out / COMPARE_CSV, rows, columns)
    return {"runs": runs, "table": table, "out": out, "plots": written, "notes": notes, "groups": groups}


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
    p.add_argument(
        "--by",
        action="append",
        default=[],
        metavar="KEY",
        help="group runs by this recipe key (repeatable), e.g. --by train.lr: mean and std over seeds",
    )
    p.add_argument("--no-plots", action="store_true", help="write the table only")
    p.set_defaults(func=run_compare_cli)


def run_compare_cli(args: argparse.Namespace) -> int:
    result = compare(args.runs, args.metric, args.out, plots=not args.no_plots, by=args.by)
    sys.stdout.write(result["table"])
    for note in result["notes"]:
        print(note)
    shown = ", ".join(p.name for p in result["plots"]) or "none"
    print(f"\nwrote {result['out'] / COMPARE_MD}, {result['out'] / COMPARE_CSV}; plots: {shown}")
    return 0
