"""PNG plots of evaluation results (matplotlib's object API on the Agg canvas: no pyplot, no global
figure state, no display needed).

One plot per result, chosen by its shape: a curve over positions (per_position, extrapolation), a
metric against the swept axis (shots, length; "n/a" points marked), bars for single-point tasks,
and a histogram of window losses for ``val``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mosaics_lab.evaluation.common import EvalResult
from mosaics_lab.evaluation.lm import gain_ranges


def _new_figure() -> tuple[Figure, object]:
    fig = Figure(figsize=(6.4, 4.0), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _values(seq: list[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in seq], dtype=float)


def _plot_curve(ax: object, curve: np.ndarray, **kwargs: object) -> None:
    """Plot a per-position curve through its finite points; sparse curves (task examples, where only
    some positions carry a label) get markers so that isolated positions stay visible."""
    x = np.arange(len(curve))
    finite = np.isfinite(curve)
    sparse = finite.sum() < 0.9 * len(curve)
    ax.plot(
        x[finite], curve[finite], marker="." if sparse else None, linewidth=0.8 if sparse else 1.2, **kwargs
    )


def plot_result(result: EvalResult, task: str, title: str, path: str | Path) -> Path:
    """Write the plot of ``result`` to ``path`` (PNG) and return the path."""
    fig, ax = _new_figure()
    if task == "val":
        losses = _values(result.curves.get("window_loss", []))
        ax.hist(losses[np.isfinite(losses)], bins=30, color="tab:blue", alpha=0.8)
        ax.axvline(result.metrics.get("loss") or np.nan, color="k", linestyle="--", label="mean")
        ax.set_xlabel("loss per window (nats / token)")
        ax.set_ylabel("windows")
        ax.legend()
    elif task == "per_position":
        curve = _values(result.curves["loss"])
        _plot_curve(ax, curve, color="tab:blue")
        (ref_start, ref_end), (last_start, last_end) = gain_ranges(len(curve))
        ax.axvspan(
            ref_start, ref_end, color="tab:orange", alpha=0.15, label=f"positions {ref_start}-{ref_end - 1}"
        )
        ax.axvspan(last_start, last_end, color="tab:green", alpha=0.15, label="last quarter")
        gain = result.metrics.get("in_context_gain")
        slope = result.metrics.get("loss_slope_per_doubling")
        if slope is not None:
            # the fitted line, through the curve's mean over the fitted positions
            t = np.arange(ref_start, len(curve))
            keep = np.isfinite(curve[ref_start:])
            x = np.log2(t + 1.0)
            intercept = np.mean(curve[ref_start:][keep] - slope * x[keep])
            ax.plot(
                t, intercept + slope * x, color="k", linestyle="--", linewidth=0.8, label="fit on log2(t+1)"
            )
        shown_gain = f"{gain:.3f}" if gain is not None else "n/a"
        shown_slope = f"{slope:.3f}" if slope is not None else "n/a"
        ax.set_title(
            f"in-context gain {shown_gain} (loss at {ref_start}-{ref_end - 1} minus last quarter), "
            f"slope {shown_slope} / doubling",
            fontsize=8,
        )
        ax.set_xlabel("position")
        ax.set_ylabel("loss (nats / token)")
        ax.legend()
    elif task == "extrapolation":
        for length, curve in result.curves.items():
            _plot_curve(ax, _values(curve), label=f"T = {length}")
        train_length = result.info.get("train_length")
        if train_length:
            ax.axvline(train_length, color="k", linestyle=":", label="training length")
        missing = [str(p["length"]) for p in result.points if p["status"] != "ok"]
        if missing:
            ax.set_title(f"n/a (model cannot run): T = {', '.join(missing)}", fontsize=9)
        ax.set_xscale("symlog", linthresh=32)
        ax.set_xlabel("position")
        ax.set_ylabel("loss (nats / token)")
        ax.legend(fontsize=8)
    elif result.axis is not None:
        _plot_sweep(ax, result)
    else:
        names = [k for k, v in result.metrics.items() if v is not None]
        ax.bar(names, [result.metrics[k] for k in names], color="tab:blue")
        chance = result.info.get("chance")
        if chance is not None:
            ax.axhline(chance, color="gray", linestyle="--", label="chance")
            ax.legend()
        ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def _plot_sweep(ax: object, result: EvalResult) -> None:
    axis = result.axis
    xs = [p[axis] for p in result.points]
    for name in result.point_metric_names():
        ys = _values([p["metrics"].get(name) for p in result.points])
        ax.plot(xs, ys, marker="o", label=name)
    chance = [p.get("chance") for p in result.points]
    if any(c is not None for c in chance):
        ax.plot(xs, _values(chance), color="gray", linestyle="--", label="chance")
    for p in result.points:
        if p["status"] != "ok":
            ax.annotate("n/a", (p[axis], 0.02), ha="center", color="tab:red")
            ax.axvline(p[axis], color="tab:red", alpha=0.2)
    if xs and min(xs) > 0:
        ax.set_xscale("log", base=2)
    ax.set_xticks(xs)
    ax.set_xticklabels([str(x) for x in xs])
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("shots" if axis == "shots" else "length (tokens)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
