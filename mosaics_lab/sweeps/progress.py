"""What a person watching a sweep sees: a tqdm bar over the study's trials (done / running / failed,
the best objective so far) on stderr, and one line per finished trial (number, state, objective, its
values at 3 significant digits, wall time). The bar and the lines are the launcher's; a trial's own
output (training's per-step lines, warnings, tracebacks) goes to ``train.log`` in its run dir only.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from mosaics_lab.analysis.tables import short_value
from mosaics_lab.sweeps.study import superseded_numbers


@dataclass
class TrialOutcome:
    number: int
    state: TrialState
    value: float | None = None
    error: str | None = None  # why it failed (FAIL)
    note: str | None = None  # what else the line says: where it was pruned, that it was re-enqueued
    wall_s: float | None = None  # the trial process's wall time


def trial_line(outcome: TrialOutcome, metric: str, params: Mapping[str, Any]) -> str:
    """``trial 3 COMPLETE val/loss=2.70512 | train.lr=0.003 seed=1 | 12.3 s``."""
    head = f"trial {outcome.number} {outcome.state.name}"
    if outcome.value is not None:
        head += f" {metric}={outcome.value:.6g}"
    detail = "; ".join(x for x in (outcome.note, outcome.error) if x)
    if detail:
        head += f" ({detail})"
    parts = [head, " ".join(f"{k}={short_value(v)}" for k, v in params.items()) or "base recipe"]
    if outcome.wall_s is not None:
        parts.append(f"{outcome.wall_s:.1f} s")
    return " | ".join(parts)


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """The study's trials by what the bar shows; a failed trial that a retry stands in for is not
    counted (its retry is)."""
    trials = study.get_trials(deepcopy=False)
    superseded = superseded_numbers(trials)
    live = [t for t in trials if t.number not in superseded]
    count = {s: sum(t.state == s for t in live) for s in TrialState}
    return {
        "done": count[TrialState.COMPLETE] + count[TrialState.PRUNED],
        "pruned": count[TrialState.PRUNED],
        "running": count[TrialState.RUNNING],
        "failed": count[TrialState.FAIL],
    }


class TrialBar:
    """A tqdm bar over the study's trials, shown from ``open`` to ``close`` and refreshed from the
    study when a trial starts or ends (so other workers' trials and those of earlier launches count
    too). Disabled, or not open: shows nothing, and ``writing`` is a plain context."""

    def __init__(self, study: optuna.Study, metric: str, enabled: bool) -> None:
        self.study, self.metric, self.enabled = study, metric, enabled
        self._lock = threading.Lock()
        self._bar: Any = None

    def open(self, total: int | None) -> None:
        """Show the bar over ``total`` trials (None: unknown, e.g. a sampler with a timeout only)."""
        if self.enabled and self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total,
                desc=self.study.study_name,
                unit="trial",
                dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} trials [{elapsed}<{remaining}{postfix}]",
            )
            self.refresh()

    def refresh(self) -> None:
        if self._bar is None:
            return
        counts = trial_counts(self.study)
        postfix = f"{counts['done']} done, {counts['running']} running, {counts['failed']} failed"
        if counts["pruned"]:
            postfix += f" ({counts['pruned']} pruned)"
        best = _best_value(self.study)
        if best is not None:
            postfix += f"; best {self.metric} {best:.4g}"
        with self._lock:
            self._bar.n = counts["done"] + counts["failed"]
            self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.refresh()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Print lines inside this context: the bar steps aside and is drawn again below them."""
        if self._bar is None:
            yield
            return
        with self._lock, self._bar.external_write_mode():
            yield

    def close(self) -> None:
        if self._bar is not None:
            self.refresh()
            self._bar.close()
            self._bar = None


def _best_value(study: optuna.Study) -> float | None:
    try:
        return study.best_value
    except ValueError:  # no completed trial yet
        return None
