"""A sweep's results: the table of trials (``summary.csv``, ``summary.md``, ``--status``) and the plots
of ``optuna.visualization.matplotlib`` as PNG (history, parameter importances, intermediate values,
slice, contour). A plot that cannot be drawn yet (too few trials, one parameter) is skipped with a
note in ``summary.md``; plotting never fails a sweep.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from mosaics_lab.analysis.tables import PARAM_DIGITS, markdown_table, short_value, write_csv
from mosaics_lab.sweeps.optuna_adapter import enqueued_params, retried_trial_number, retry_history
from mosaics_lab.sweeps.spec import SEED_KEY, Sweep
from mosaics_lab.sweeps.study import ERROR_ATTR, RUN_DIR_ATTR, WORKER_ATTR, superseded_numbers
from mosaics_lab.sweeps.workers import worker_is_dead

SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
PLOTS_DIR = "plots"
FIXED_COLUMNS = ("trial", "state", "value", "step", "duration_s")
TAIL_COLUMNS = ("run_dir", "note")


def _duration(t: FrozenTrial) -> float | None:
    if t.datetime_start is None:
        return None
    if t.datetime_complete is None:
        return None
    return round((t.datetime_complete - t.datetime_start).total_seconds(), 1)


def _note(t: FrozenTrial, retried_as: dict[int, int]) -> str:
    parts = []
    if t.number in retried_as:
        parts.append(f"retried as trial {retried_as[t.number]}")
    origin = retried_trial_number(t)
    if origin is not None:
        parts.append(f"retry of trial {origin}")
    if t.state == TrialState.WAITING:
        parts.append("queued")
    if t.state == TrialState.RUNNING:
        worker = t.user_attrs.get(WORKER_ATTR, "unknown worker")
        dead = worker_is_dead(worker) if worker != "unknown worker" else None
        parts.append(f"on {worker}" + (" (worker dead: re-run the sweep to retry it)" if dead else ""))
    error = t.user_attrs.get(ERROR_ATTR)
    if t.state == TrialState.FAIL and error:
        parts.append(str(error).splitlines()[0][:300])
    return "; ".join(parts)


def _params(t: FrozenTrial) -> dict[str, Any]:
    """A trial's parameters; for a queued trial, the values it was enqueued with."""
    return t.params or enqueued_params(t)


def trial_rows(study: optuna.Study) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per trial (number, state, value, step, duration, params..., run dir, note) and the
    parameter columns in first-seen order."""
    trials = study.get_trials(deepcopy=False)
    retried_as: dict[int, int] = {}
    for t in trials:
        history = retry_history(t)
        if history:
            retried_as[history[-1]] = t.number
    params = list(dict.fromkeys(k for t in trials for k in _params(t)))
    rows = []
    for t in trials:
        value = t.value if t.state in (TrialState.COMPLETE, TrialState.PRUNED) else None
        row: dict[str, Any] = {
            "trial": t.number,
            "state": t.state.name,
            "value": value,
            "step": t.user_attrs.get("global_step", t.last_step),
            "duration_s": _duration(t),
        }
        row.update({k: _params(t).get(k) for k in params})
        row["run_dir"] = t.user_attrs.get(RUN_DIR_ATTR)
        row["note"] = _note(t, retried_as)
        rows.append(row)
    return rows, params


def state_counts(study: optuna.Study) -> str:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no trials"


def _best(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no completed trial
        return None


def seed_rows(study: optuna.Study, params: list[str]) -> list[dict[str, Any]]:
    """Completed trials grouped by everything but the seed: mean, std and count of the objective."""
    groups: dict[tuple, list[float]] = {}
    keys = [k for k in params if k != SEED_KEY]
    superseded = superseded_numbers(study.get_trials(deepcopy=False))
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.number in superseded or t.value is None:
            continue
        groups.setdefault(tuple(t.params.get(k) for k in keys), []).append(t.value)
    rows = []
    for group, values in groups.items():
        row: dict[str, Any] = dict(zip(keys, group))
        row.update(
            {
                "seeds": len(values),
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else None,
                "min": min(values),
                "max": max(values),
            }
        )
        rows.append(row)
    return rows


# --- plots ----------------------------------------------------------------------------------------


def param_digits(params: list[str]) -> dict[str, int]:
    """Markdown digits of the parameter columns: 3 significant digits."""
    return {p: PARAM_DIGITS for p in params}


def _contour_blocker(complete: list[FrozenTrial], params: list[str]) -> str | None:
    # optuna's contour interpolates with scipy, a dependency of this package.
    if len(complete) < 2 or not 2 <= len(params) <= 4:
        return "needs >= 2 completed trials and 2 to 4 parameters"
    return None


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna's plots log warnings such as 'unique value length is less than 2'; not worth a line."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def plot_cells(study: optuna.Study) -> Any:
    """The ablation view: one bar per distinct parameter set (seeds pooled), mean +- std of the
    objective over its completed trials, best first. Optuna has no plot that pools seeds."""
    import matplotlib.pyplot as plt

    rows = seed_rows(
        study, list(dict.fromkeys(k for t in study.get_trials(deepcopy=False) for k in t.params))
    )
    keys = [k for k in rows[0] if k not in ("seeds", "mean", "std", "min", "max")] if rows else []
    varying = [k for k in keys if len({str(r.get(k)) for r in rows}) > 1] or keys
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    rows.sort(key=lambda r: r["mean"], reverse=reverse)
    labels = [
        ", ".join(f"{k.rsplit('.', 1)[-1]}={short_value(r.get(k))}" for k in varying) or "base" for r in rows
    ]
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.35 * len(rows)))
    ax.barh(
        range(len(rows)), [r["mean"] for r in rows], xerr=[r["std"] or 0.0 for r in rows], color="tab:blue"
    )
    ax.set_yticks(range(len(rows)), [f"{lab} (n={r['seeds']})" for lab, r in zip(labels, rows)], fontsize=8)
    ax.invert_yaxis()  # best on top
    ax.set_xlabel("objective (mean +- std over seeds)")
    lo = min(r["mean"] - (r["std"] or 0.0) for r in rows)
    hi = max(r["mean"] + (r["std"] or 0.0) for r in rows)
    ax.set_xlim(lo - 0.1 * (hi - lo + 1e-9), hi + 0.1 * (hi - lo + 1e-9))
    ax.grid(axis="x", alpha=0.3)
    return ax


def write_plots(study: optuna.Study, plots_dir: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """PNG plots of the study; returns (written paths, [(plot, why skipped)])."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, works on headless machines
    import matplotlib.pyplot as plt
    import numpy as np
    from optuna.visualization import matplotlib as ovm

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    params = list(dict.fromkeys(k for t in complete for k in t.params))
    with_values = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    plans: list[tuple[str, Callable[[optuna.Study], Any], str | None]] = [
        ("history", ovm.plot_optimization_history, None if complete else "needs a completed trial"),
        (
            "importances",
            ovm.plot_param_importances,
            None
            if len(complete) >= 2 and len(params) > 1
            else "needs >= 2 completed trials and > 1 parameter",
        ),
        ("intermediate", ovm.plot_intermediate_values, None if with_values else "no trial reported values"),
        ("slice", ovm.plot_slice, None if complete and params else "needs a completed trial with parameters"),
        ("contour", ovm.plot_contour, _contour_blocker(complete, params)),
        ("cells", plot_cells, None if len(complete) >= 2 and params else "needs >= 2 completed trials"),
    ]
    written: list[Path] = []
    skipped: list[tuple[str, str]] = []
    plots_dir.mkdir(parents=True, exist_ok=True)
    for name, plot, reason in plans:
        path = plots_dir / f"{name}.png"
        if reason is not None:
            skipped.append((name, reason))
            path.unlink(missing_ok=True)  # a stale plot of an earlier call would mislead
            continue
        try:
            with warnings.catch_warnings(), _quiet_optuna():
                warnings.simplefilter("ignore")  # ExperimentalWarning, few-trials warnings
                axes = plot(study)
            fig = np.ravel(axes)[0].figure if isinstance(axes, np.ndarray) else axes.figure
            fig.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(fig)
            written.append(path)
        except Exception as exc:  # a plot must never fail the sweep
            plt.close("all")
            skipped.append((name, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))
    return written, skipped


# --- summary files --------------------------------------------------------------------------------


def summary_markdown(study: optuna.Study, sweep: Sweep, storage: str) -> tuple[str, list[dict[str, Any]]]:
    rows, params = trial_rows(study)
    obj = sweep.spec.objective
    recipes = ", ".join(f"`{r}`" for r in sweep.recipes)
    lines = [
        f"# Sweep `{sweep.study}`",
        "",
        *([sweep.spec.description.strip(), ""] if sweep.spec.description else []),
        f"- sweep file: `{sweep.path}`"
        + (f" (size `{sweep.size}`)" if sweep.size else "")
        + f"; recipe{'s' if len(sweep.recipes) > 1 else ''}: {recipes}",
        f"- objective: `{obj.metric}` ({obj.direction}, {obj.value} value); "
        f"sampler: {sweep.spec.sampler.type}; pruner: {sweep.spec.pruner.type}",
        f"- storage: `{storage}`",
        f"- trials: {state_counts(study)}",
    ]
    best = _best(study)
    if best is not None:
        shown = ", ".join(f"{k}={short_value(v)}" for k, v in best.params.items()) or "base recipe"
        lines.append(f"- best: trial {best.number}, {obj.metric} = {best.value:.6g} ({shown})")
    columns = [*FIXED_COLUMNS, *params, *TAIL_COLUMNS]
    lines += ["", "## Trials", "", markdown_table(rows, columns, param_digits(params)).rstrip()]
    if SEED_KEY in params and len(sweep.spec.seeds) > 1:
        lines += [
            "",
            "## Across seeds (completed trials)",
            "",
            markdown_table(seed_rows(study, params), digits=param_digits(params)).rstrip(),
        ]
    return "\n".join(lines) + "\n", rows


def write_report(study: optuna.Study, sweep: Sweep, out_dir: Path, storage: str) -> dict[str, Any]:
    """Write summary.csv, summary.md and plots/*.png under ``out_dir``; returns what was written."""
    text, rows = summary_markdown(study, sweep, storage)
    _, params = trial_rows(study)
    write_csv(out_dir / SUMMARY_CSV, rows, [*FIXED_COLUMNS, *params, *TAIL_COLUMNS])
    written, skipped = write_plots(study, out_dir / PLOTS_DIR)
    plot_lines = ["", "## Plots", ""]
    plot_lines += [f"- ![{p.stem}]({PLOTS_DIR}/{p.name})" for p in written]
    plot_lines += [f"- {name}: skipped ({why})" for name, why in skipped]
    (out_dir / SUMMARY_MD).write_text(text + "\n".join(plot_lines) + "\n")
    return {"csv": out_dir / SUMMARY_CSV, "md": out_dir / SUMMARY_MD, "plots": written, "skipped": skipped}


def status_text(study: optuna.Study, sweep: Sweep, storage: str) -> str:
    rows, params = trial_rows(study)
    head = f"study {sweep.study!r} in {storage}: {state_counts(study)}"
    best = _best(study)
    if best is not None and best.value is not None and math.isfinite(best.value):
        head += f"; best trial {best.number}: {sweep.spec.objective.metric} = {best.value:.6g}"
    return (
        head + "\n\n" + markdown_table(rows, [*FIXED_COLUMNS, *params, *TAIL_COLUMNS], param_digits(params))
    )
