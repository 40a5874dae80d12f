"""A reproduction's numbers and report, from what its runs stored (never by retraining).

A study (``sweeps/reproduce/<study>.yaml``, run by ``mosaics-lab reproduce``) is a grid of runs:
recipes (one per architecture) x the values of ``select`` (the learning-rate search) x seeds, plus
any axis keys (a budget, a number of training languages), each run evaluated afterwards. This module
turns those run directories into one results record (``collect``), the numbers every claim needs
(``summarize``) and ``reports/<study>.md`` with its PNGs (``write_report``). The record is written as
``results.json`` next to the report, so the report renders again from it alone.

The protocol, identical for every row (a row = one value of the ``group_by`` keys, e.g. the
architecture and the budget):
- the search: for each row, the ``select`` value (learning rate) with the lowest mean final
  ``val/loss`` over seeds (validation split; the evaluations use the task's test split) is kept;
  every other value is listed in the calibration table;
- the numbers: mean +- sample std over the seeds at that value, with the seed count;
- the learned-at-1x gate: a row whose ``gate.metric`` at the training length (the eval's 1x point,
  or its headline) is not above chance by ``gate.margin`` x (1 - chance) on its mean, and above
  chance on every seed, "did not learn at this budget": its extrapolation / shots / ablation
  curves are withheld from the comparison and the report says the budget must be raised.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mosaics_lab import constants as C
from mosaics_lab.analysis.runs import Run, discover_runs, load_runs
from mosaics_lab.analysis.tables import markdown_table, short_value

RESULTS_FILE = "results.json"
RESULTS_VERSION = 1
SEED_KEY = "seed"
EVAL_DIR = "eval"


@dataclass
class Gate:
    """The learned-at-1x gate: ``metric`` of eval ``eval`` at its ``point`` (label, e.g. "1x")."""

    eval: str | None = None  # None: no gate (language modelling: every row has learned something)
    metric: str = "accuracy"
    point: str = "1x"
    margin: float = 0.2  # mean must exceed chance + margin * (1 - chance)
    chance: float | None = None  # used when the evaluation records no chance level


@dataclass
class ReportSpec:
    """What a study reports (the ``reproduce:`` section of its sweep file, minus how it runs)."""

    title: str
    claim: str = ""  # the paper's claim, in a sentence, with its published numbers
    published: str = ""  # the published numbers to put beside ours
    group_by: list[str] = field(default_factory=lambda: ["model.arch"])
    select: str = "train.lr"  # searched per row; chosen by mean final val/loss over seeds
    evals: list[str] = field(default_factory=list)  # eval names (eval/<name>.json) in the tables
    gate: Gate = field(default_factory=Gate)
    notes: str = ""  # what the study's set-up differs in from the paper's, and why
    reading: str = ""  # what this size's measured numbers show, and the verdict on the claim
    # the study's axis (one of ``group_by``: a budget, a number of training languages): each eval's
    # headline metrics are drawn against it, one line per value of the other keys
    axis: str | None = None


# --- collecting ----------------------------------------------------------------------------------


def _sequences_seen(run: Run) -> int | None:
    steps, batch = run.step, run.recipe.get("train.global_batch_size")
    return steps * int(batch) if steps is not None and batch is not None else None


def run_record(run: Run, group_by: Sequence[str], select: str) -> dict[str, Any]:
    evals = {}
    for path in sorted((run.path / EVAL_DIR).glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        evals[str(record.get("name", path.stem))] = {
            "metrics": record.get("metrics", {}),
            "axis": record.get("axis"),
            "points": [
                {
                    "label": p.get("label", str(p.get(record.get("axis") or "", ""))),
                    "chance": p.get("chance"),
                    "metrics": p.get("metrics", {}),
                }
                for p in record.get("points", [])
            ],
            "chance": (record.get("info") or {}).get("chance"),
        }
    return {
        "run": str(run.path),
        "group": {k: run.recipe.get(k) for k in group_by},
        "select": run.recipe.get(select),
        "seed": run.recipe.get(SEED_KEY),
        "recipe": run.recipe.get("name"),
        "params": run.meta.get("params"),
        "status": run.status,
        "steps": run.step,
        "sequences": _sequences_seen(run),
        "val_loss": run.final(C.VAL_LOSS),
        "wall_time_s": run.summary.get("wall_time_s"),
        "evals": evals,
    }


def collect(
    study_dirs: Path | Sequence[Path], spec: ReportSpec, meta: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The results record of every run below ``study_dirs`` (trial dirs of the study's sweep, and any
    run dir named directly, e.g. a reused calibration run)."""
    dirs = [study_dirs] if isinstance(study_dirs, Path) else list(study_dirs)
    runs = load_runs(discover_runs([str(p) for p in dirs]))
    return {
        "version": RESULTS_VERSION,
        "meta": dict(meta or {}),
        "runs": [run_record(r, spec.group_by, spec.select) for r in runs],
    }


# --- summarising ---------------------------------------------------------------------------------


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return None, None, 0
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None), len(xs)


def format_mean_std(mean: float | None, std: float | None, n: int, digits: int = 3) -> str:
    if mean is None:
        return "n/a"
    text = f"{mean:.{digits}f}"
    if std is not None:
        text += f" +- {std:.{digits}f}"
    return f"{text} (n={n})"


def _key(group: Mapping[str, Any]) -> str:
    return json.dumps(group, sort_keys=True, default=str)


def _label(group: Mapping[str, Any]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={short_value(v)}" for k, v in group.items())


def _point_value(ev: Mapping[str, Any], metric: str, point: str) -> tuple[float | None, float | None]:
    """(value, chance) of ``metric`` at the point labelled ``point`` (else the headline metric)."""
    for p in ev.get("points", []):
        if p.get("label") == point:
            return p["metrics"].get(metric), p.get("chance")
    return ev.get("metrics", {}).get(metric), ev.get("chance")


def learned(rows: Sequence[Mapping[str, Any]], gate: Gate) -> tuple[bool, str]:
    """The gate on the seed runs of one row: (learned, a sentence saying why)."""
    if gate.eval is None:
        return True, "no gate (loss is reported as is)"
    values, chance = [], gate.chance
    for r in rows:
        ev = r["evals"].get(gate.eval)
        if ev is None:
            return False, f"eval {gate.eval!r} missing for {r['run']}"
        v, c = _point_value(ev, gate.metric, gate.point)
        chance = c if c is not None else chance  # the evaluation's own chance level wins
        values.append(v)
    if chance is None or any(v is None for v in values):
        return False, f"{gate.metric} at {gate.point} or its chance level is missing"
    mean = statistics.fmean(values)
    bar = chance + gate.margin * (1 - chance)
    at = f"{gate.metric}@{gate.point}" if gate.point else gate.metric
    if mean > bar and all(v > chance for v in values):
        return True, f"{at} {mean:.3f} > {bar:.3f} (chance {chance:.3f})"
    return False, (
        f"did not learn at this budget: {at} {mean:.3f} <= {bar:.3f} "
        f"(chance {chance:.3f} + {gate.margin:g} x (1 - chance)); raise the budget"
    )


def _order(value: Any) -> tuple[int, float, str]:
    """Sort key of a group value: numbers by value (125 before 2000), anything else by its text."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, json.dumps(value, sort_keys=True, default=str))


def summarize(results: Mapping[str, Any], spec: ReportSpec) -> dict[str, Any]:
    """Calibration rows, the chosen ``select`` value per row, the main rows and the gated curves."""
    done = [r for r in results["runs"] if r["status"] == "completed"]
    groups: dict[str, dict[str, Any]] = {}
    for r in done:
        g = groups.setdefault(_key(r["group"]), {"group": r["group"], "by_select": {}})
        g["by_select"].setdefault(json.dumps(r["select"]), []).append(r)
    calibration, main, curves = [], [], {}
    axis_curves: dict[str, dict[str, dict[str, Any]]] = {}
    for g in groups.values():
        scored = []
        for sel, members in g["by_select"].items():
            m, s, n = mean_std([r["val_loss"] for r in members])
            calibration.append(
                {**g["group"], spec.select: json.loads(sel), "val/loss": format_mean_std(m, s, n, 4)}
            )
            scored.append((math.inf if m is None else m, sel))
        best = min(scored)[1]
        members = g["by_select"][best]
        ok, why = learned(members, spec.gate)
        row: dict[str, Any] = {**g["group"], spec.select: json.loads(best)}
        row["seeds"] = ",".join(str(r["seed"]) for r in sorted(members, key=lambda r: str(r["seed"])))
        row["params"] = members[0]["params"]
        row["sequences"] = members[0]["sequences"]
        row["val/loss"] = format_mean_std(*mean_std([r["val_loss"] for r in members]), 4)
        for name in spec.evals:
            evs = [r["evals"].get(name) for r in members]
            metrics = sorted({k for ev in evs if ev for k in ev.get("metrics", {})})
            for metric in metrics:
                row[f"{name} {metric}"] = format_mean_std(
                    *mean_std([(ev or {}).get("metrics", {}).get(metric) for ev in evs])
                )
            if ok and any(ev and ev.get("points") for ev in evs):
                curves.setdefault(name, {})[_label(g["group"])] = _curve(evs)
        row["learned"] = "yes" if ok else "no"
        main.append({**row, "gate": why})
        if spec.axis is not None and spec.axis in g["group"]:
            _add_axis_point(axis_curves, g["group"], members, spec, ok)
    calibration.sort(key=lambda r: json.dumps(r, sort_keys=True, default=str))
    main.sort(key=lambda r: [_order(r[k]) for k in spec.group_by])
    for by_metric in axis_curves.values():
        for by_series in by_metric.values():
            for c in by_series.values():  # each line in axis order
                order = sorted(range(len(c["x"])), key=lambda i: c["x"][i])
                for k in ("x", "stats", "learned"):
                    c[k] = [c[k][i] for i in order]
    return {
        "calibration": calibration,
        "main": main,
        "curves": curves,
        "axis_curves": axis_curves,
        "axis_label": _axis_label(spec.axis),
        "runs": len(results["runs"]),
        "completed": len(done),
    }


# A budget axis is drawn against what it buys: the training sequences seen (steps x global batch).
_BUDGET_KEY = "train.max_steps"


def _axis_label(axis: str | None) -> str | None:
    if axis is None:
        return None
    return "training sequences seen" if axis == _BUDGET_KEY else axis.rsplit(".", 1)[-1]


def _add_axis_point(
    out: dict[str, dict[str, dict[str, Any]]],
    group: Mapping[str, Any],
    members: Sequence[Mapping[str, Any]],
    spec: ReportSpec,
    ok: bool,
) -> None:
    """One point per headline metric of each eval: mean, std, n over the seed runs of one row, at the
    row's axis value, on the line of the row's other group keys. A row that did not learn stays on the
    line (chance at a small budget is a point of a sample-efficiency curve)."""
    assert spec.axis is not None
    x = members[0]["sequences"] if spec.axis == _BUDGET_KEY else group[spec.axis]
    if not isinstance(x, (int, float)):
        return  # a categorical axis has no line to draw
    series = _label({k: v for k, v in group.items() if k != spec.axis})
    for name in spec.evals:
        evs = [r["evals"].get(name) for r in members]
        chance = next((ev.get("chance") for ev in evs if ev and ev.get("chance") is not None), None)
        if chance is None and spec.gate.eval == name:
            chance = spec.gate.chance
        for metric in sorted({k for ev in evs if ev for k in ev.get("metrics", {})}):
            stats = mean_std([(ev or {}).get("metrics", {}).get(metric) for ev in evs])
            if stats[0] is None:
                continue
            line = (
                out.setdefault(name, {})
                .setdefault(metric, {})
                .setdefault(series, {"x": [], "stats": [], "learned": [], "chance": None})
            )
            line["x"].append(x)
            line["stats"].append(stats)
            line["learned"].append(ok)
            if metric == spec.gate.metric:
                line["chance"] = chance


def _curve(evs: Sequence[Mapping[str, Any] | None]) -> dict[str, Any]:
    """Per point label (in order) and metric: mean, std, n over the seed runs; and chance."""
    labels = list(dict.fromkeys(p["label"] for ev in evs if ev for p in ev["points"]))
    out: dict[str, Any] = {"labels": labels, "chance": [], "metrics": {}}
    metrics = sorted({m for ev in evs if ev for p in ev["points"] for m in p["metrics"]})
    for label in labels:
        pts = [next((p for p in ev["points"] if p["label"] == label), None) for ev in evs if ev]
        out["chance"].append(next((p["chance"] for p in pts if p and p.get("chance") is not None), None))
        for m in metrics:
            out["metrics"].setdefault(m, []).append(
                mean_std([p["metrics"].get(m) if p else None for p in pts])
            )
    return out


# --- writing -------------------------------------------------------------------------------------


# Above this many points with integer labels (a per-position curve), a curve is drawn as a line
# against the position, the whole of it on a log axis beside a zoom on the late context.
_LONG_CURVE = 24
_LATE_FROM = 16


def _integer_labels(labels: Sequence[Any]) -> list[int] | None:
    try:
        return [int(x) for x in labels]
    except (TypeError, ValueError):
        return None


def _draw_points(ax, by_row: Mapping[str, Mapping[str, Any]], metric: str) -> None:
    chance_drawn = False
    for label, c in by_row.items():
        stats = c["metrics"].get(metric)
        if not stats:
            continue
        xs = list(range(len(c["labels"])))
        ys = [s[0] if s[0] is not None else float("nan") for s in stats]
        es = [s[1] or 0.0 for s in stats]
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label)
        ax.set_xticks(xs, c["labels"])
        if not chance_drawn and any(ch is not None for ch in c["chance"]):
            ax.plot(
                xs,
                [ch if ch is not None else float("nan") for ch in c["chance"]],
                "k--",
                lw=1,
                label="chance",
            )
            chance_drawn = True


def _draw_long(axes, by_row: Mapping[str, Mapping[str, Any]], metric: str) -> None:
    """Mean line and +- std band against position + 1: all positions on a log axis (left), and
    positions >= _LATE_FROM on a linear one with its own y range (right)."""
    import numpy as np

    whole, late = axes
    for label, c in by_row.items():
        stats = c["metrics"].get(metric)
        positions = _integer_labels(c["labels"])
        if not stats or positions is None:
            continue
        x = np.asarray(positions, dtype=float)
        y = np.asarray([s[0] if s[0] is not None else np.nan for s in stats], dtype=float)
        e = np.asarray([s[1] or 0.0 for s in stats], dtype=float)
        for ax, keep in ((whole, x >= 0), (late, x >= _LATE_FROM)):
            (line,) = ax.plot(x[keep] + 1, y[keep], lw=1.2, label=label)
            ax.fill_between(
                x[keep] + 1, (y - e)[keep], (y + e)[keep], color=line.get_color(), alpha=0.2, lw=0
            )
    whole.set_xscale("log")
    whole.set_xlabel("position + 1 (log)")
    late.set_xlabel(f"position + 1 (from {_LATE_FROM})")
    late.set_title("late context", fontsize=9)


def plot_curves(curves: Mapping[str, Mapping[str, Any]], out_dir: Path, stem: str) -> list[Path]:
    """One PNG per (eval, metric): mean +- std over seeds vs the eval's points, one line per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name, by_row in curves.items():
        metrics = sorted({m for c in by_row.values() for m in c["metrics"]})
        long = all(
            len(c["labels"]) > _LONG_CURVE and _integer_labels(c["labels"]) is not None
            for c in by_row.values()
        )
        for metric in metrics:
            if long:
                fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
                _draw_long(axes, by_row, metric)
                legend_ax = axes[1]
                axes[0].set_ylabel(metric)
                axes[0].set_title(f"{name}: {metric} (mean +- std over seeds)", fontsize=9)
            else:
                fig, ax = plt.subplots(figsize=(5.5, 3.5))
                _draw_points(ax, by_row, metric)
                legend_ax = ax
                ax.set_title(f"{name}: {metric} (mean +- std over seeds)")
                ax.set_ylabel(metric)
            paths.append(_save(fig, legend_ax, out_dir / f"{stem}_{name}_{metric}.png".replace("/", "_")))
    return paths


def _save(fig, legend_ax, path: Path) -> Path:
    import matplotlib.pyplot as plt

    legend_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_axis_curves(
    axis_curves: Mapping[str, Mapping[str, Mapping[str, Any]]], axis_label: str, out_dir: Path, stem: str
) -> list[Path]:
    """One PNG per (eval, headline metric): mean +- std over seeds against the study's axis, one line
    per row of the other keys; hollow markers where the row did not learn; log x over a decade or more."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tag = "sequences" if axis_label == _axis_label(_BUDGET_KEY) else axis_label
    paths = []
    for name, by_metric in axis_curves.items():
        for metric, by_series in by_metric.items():
            fig, ax = plt.subplots(figsize=(5.5, 3.5))
            xs_all: list[float] = []
            chance, any_hollow = None, False
            for label, c in by_series.items():
                ys = [s[0] for s in c["stats"]]
                es = [s[1] or 0.0 for s in c["stats"]]
                (line, *_) = ax.errorbar(c["x"], ys, yerr=es, marker="o", capsize=3, label=label)
                hollow = [i for i, ok in enumerate(c["learned"]) if not ok]
                if hollow:
                    any_hollow = True
                    ax.plot(
                        [c["x"][i] for i in hollow],
                        [ys[i] for i in hollow],
                        "o",
                        mfc="white",
                        mec=line.get_color(),
                        zorder=3,  # above the errorbar's own (filled) markers
                    )
                xs_all += c["x"]
                chance = c["chance"] if c["chance"] is not None else chance
            if chance is not None:
                ax.axhline(chance, color="k", ls="--", lw=1, label="chance")
            if xs_all and min(xs_all) > 0 and max(xs_all) >= 10 * min(xs_all):
                ax.set_xscale("log")
            ax.set_xlabel(axis_label)
            ax.set_ylabel(metric)
            note = " (hollow: did not learn)" if any_hollow else ""
            ax.set_title(f"{name}: {metric} vs {axis_label}{note}", fontsize=9)
            paths.append(_save(fig, ax, out_dir / f"{stem}_{name}_{metric}_vs_{tag}.png".replace("/", "_")))
    return paths


def render(results: Mapping[str, Any], spec: ReportSpec, figures: Sequence[Path] = ()) -> str:
    """The Markdown report."""
    s = summarize(results, spec)
    meta = results.get("meta", {})
    lines = [f"# {spec.title}", ""]
    if spec.claim:
        lines += [f"**Claim.** {spec.claim}", ""]
    lines += [
        f"**Command.** `{meta.get('command', '?')}` (size `{meta.get('size', '?')}`); "
        f"{s['completed']} of {s['runs']} runs completed; wall time {_hours(meta.get('wall_time_s'))} "
        f"on {meta.get('machine', 'an unrecorded machine')}.",
        "",
        f"**Protocol.** Every row: the same budget, the same search over `{spec.select}` (the value with the "
        "lowest mean final validation loss over seeds is kept; calibration table below), the same seeds; "
        "parameter counts in the table; evaluations on the test split; mean +- sample std over seeds."
        + (
            " The first seed's run at the kept value is its calibration run (the same recipe, seed and"
            " budget), reused rather than trained twice."
            if meta.get("reused")
            else ""
        ),
        "",
        "## Results",
        "",
        markdown_table([{k: v for k, v in r.items() if k != "gate"} for r in s["main"]])
        if s["main"]
        else "No completed runs yet.",
        "",
    ]
    unlearned = [r for r in s["main"] if r["learned"] == "no"]
    if unlearned:
        if spec.axis is None:
            head = "**Did not learn at this budget** (their curves are withheld; the budget must be raised):"
        else:
            # on an axis (a budget, a number of languages) the small points are expected to fall short:
            # they stay on the axis figure, and only the rows that matter to the claim need more budget
            head = (
                f"**Did not learn at this point of `{spec.axis}`** (their curves are withheld; they stay "
                "on the figure against the axis; a claim that needs them learned needs a larger budget):"
            )
        lines += [head, ""]
        lines += [f"- {_label({k: r[k] for k in spec.group_by})}: {r['gate']}" for r in unlearned] + [""]
    for fig in figures:
        lines += [f"![{fig.stem}]({fig.name})", ""]
    lines += ["## What the numbers show", "", spec.reading or "Not written yet for this size.", ""]
    if spec.published:
        lines += ["## Published", "", spec.published, ""]
    if spec.notes:
        lines += ["## Set-up notes", "", spec.notes, ""]
    # The calibration study's own runs (first seed, every value) when the driver recorded them;
    # otherwise the values found among the reported runs.
    calibration = meta.get("calibration") or s["calibration"]
    chosen = meta.get("chosen")
    lines += ["## Calibration", ""]
    if chosen is not None:
        lines += [f"Kept per grid cell (lowest final validation loss): {', '.join(map(str, chosen))}.", ""]
    edges = meta.get("not_bracketed")
    if edges:
        lines += [
            "**Not bracketed** (the kept value is an edge of the values tried, and the study file lists "
            "none beyond it in `reproduce.calibrate_beyond`; a better value may lie outside):",
            "",
            *[f"- {line}" for line in edges],
            "",
        ]
    elif edges is not None:
        lines += ["Every kept value is bracketed by a worse value on each side.", ""]
    lines += [markdown_table(calibration) if calibration else "none", ""]
    return "\n".join(lines)


def _hours(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "unrecorded"
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def write_report(results: Mapping[str, Any], spec: ReportSpec, out_md: Path) -> dict[str, Any]:
    """``out_md``, its PNGs beside it and ``<stem>_results.json`` (the record it renders from)."""
    out_md.parent.mkdir(parents=True, exist_ok=True)
    stem = out_md.stem
    record = out_md.with_name(f"{stem}_{RESULTS_FILE}")
    record.write_text(json.dumps(results, indent=1, sort_keys=True, default=str) + "\n")
    s = summarize(results, spec)
    figures = plot_curves(s["curves"], out_md.parent, stem)
    if s["axis_curves"]:
        figures += plot_axis_curves(s["axis_curves"], s["axis_label"], out_md.parent, stem)
    out_md.write_text(render(results, spec, figures))
    return {"md": out_md, "results": record, "figures": figures}


def read_results(path: Path) -> dict[str, Any]:
    results = json.loads(Path(path).read_text())
    if results.get("version") != RESULTS_VERSION:
        raise ValueError(f"{path}: results version {results.get('version')!r}, expected {RESULTS_VERSION}")
    return results
