"""The sweep launcher: it owns the Optuna study; every trial is a ``mosaics-lab train`` subprocess.

Each trial is a normal run of its recipe (the base recipe, or its grid cell's) with its overrides in
``<output_root>/<study>/trial-<n>/``, so DDP/FSDP trials work unchanged, GPU memory and compile caches
never leak between trials, and TensorBoard and ``compare`` see trials exactly like single runs.

How a trial is driven (one launcher thread per ``--jobs`` slot):
- the launcher tails the run's ``metrics.jsonl`` and reports each new objective value with
  ``trial.report(value, global_step)``; when ``trial.should_prune()`` says so it writes ``STOP`` in the
  run dir (``training.stopfile``), the run ends cleanly at its next step, and the trial is PRUNED.
  Optuna's Lightning callback reports once per epoch, which a step-budgeted run never finishes.
- a run that exits non-zero (exception, user error: exit 2, NaN stop: exit 3) is FAILED with the tail
  of its output in the trial's user attributes; the sweep goes on. A run whose process was killed (a
  signal: the OOM killer's SIGKILL, a SIGTERM from outside) is FAILED and re-enqueued up to
  ``max_retry`` times; every retry (Optuna's ``failed_trial``) runs in the run dir of the trial it
  retries, so it resumes from that trial's last checkpoint, not from step 0.
- Ctrl-C (or SIGTERM): running trials are asked to stop (STOP file, then SIGTERM after a grace
  period, or at once on a second Ctrl-C); they are marked FAILED ("interrupted") and re-enqueued with
  the same parameters, so re-running the command resumes the study where it stopped. Finished trials
  are never run again.

Why ask/tell and not ``Study.optimize``: a grid worker must stop when the queue of enqueued cells is
empty, and ``optimize`` would then sample fresh trials. The launcher therefore pops waiting trials
itself (``optuna_adapter.claim_waiting``: an atomic WAITING -> RUNNING transition, so each cell runs
once whatever the number of workers) and records the RDB heartbeat itself, as ``optimize`` would.

The rooms around it: ``storage`` (where the study lives), ``study`` (creating or joining it, the
fingerprint check, the sampler and pruner), ``workers`` (which launcher runs a trial, dead workers),
``trial_process`` (a trial's command line, environment, stop and signals), ``runfiles`` (what a run
leaves on disk: metrics, summary, log), ``progress`` (the bar and the line per finished trial),
``optuna_adapter`` (Optuna's private API, pinned by a test). A launcher with nothing left to start
on a storage with heartbeats waits while other workers' trials run, so it can take over a trial whose
worker dies.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from mosaics_lab import constants as C
from mosaics_lab.sweeps.optuna_adapter import (
    claim_waiting,
    heartbeat_enabled,
    record_heartbeat,
    retried_trial_number,
    stored_trial,
)
from mosaics_lab.sweeps.progress import TrialBar, TrialOutcome, trial_line
from mosaics_lab.sweeps.runfiles import (
    TRIAL_LOG,
    MetricsTail,
    died_of_a_signal,
    error_from_log,
    objective_value,
    read_summary,
)
from mosaics_lab.sweeps.spec import Sweep, is_finite, suggest_values
from mosaics_lab.sweeps.study import (
    ERROR_ATTR,
    EXIT_ATTR,
    LOG_TAIL_ATTR,
    RUN_DIR_ATTR,
    STATUS_ATTR,
    WORKER_ATTR,
    retry,
    superseded_numbers,
)
from mosaics_lab.sweeps.trial_process import (
    TERM_GRACE_S,
    default_train_command,
    request_stop,
    set_aside,
    signal_group,
    terminate,
    trial_command,
    trial_env,
)
from mosaics_lab.sweeps.workers import reap_dead_trials, worker_id
from mosaics_lab.training.stopfile import STOP_FILE

POLL_S = 0.25
STOP_GRACE_S = 120.0  # a trial asked to stop is terminated if still running after this
MAX_LAUNCHER_ERRORS = 3  # consecutive launcher-side errors after which a worker thread gives up
EXIT_INTERRUPTED = 130


@dataclass
class Launcher:
    """Runs trials of ``study`` with ``jobs`` parallel slots until the budget or the queue is spent."""

    sweep: Sweep
    study: optuna.Study
    out_dir: Path
    jobs: int = 1
    n_trials: int | None = None
    timeout: float | None = None
    train_command: Sequence[str] = field(default_factory=default_train_command)
    log: Any = print  # the launcher's notices (and, unless quiet, one line per finished trial)
    quiet: bool = False  # no line per finished trial
    bar: bool = False  # a tqdm bar over the study's trials on stderr (the CLI: on a terminal)
    interrupt: threading.Event = field(default_factory=threading.Event)  # Ctrl-C: stop running trials
    kill: threading.Event = field(default_factory=threading.Event)  # second Ctrl-C: terminate them now
    outcomes: list[TrialOutcome] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.worker = worker_id()
        self._lock = threading.Lock()
        self._deadline = time.monotonic() + self.timeout if self.timeout else None
        self._heartbeat = heartbeat_enabled(self.study)
        self._timed_out = False
        self._waiting_announced = False
        self._bar = TrialBar(self.study, self.sweep.spec.objective.metric, enabled=self.bar)

    def _say(self, message: str) -> None:
        """A notice (or a trial's line) through ``log``, with the bar stepping aside for it."""
        with self._bar.writing():
            self.log(message)

    def _budget(self) -> int | None:
        if self.n_trials is not None:
            return self.n_trials
        return len(self.sweep.cells) if self.sweep.is_grid else None

    # -- the loop --

    def run(self) -> int:
        """Run the sweep; returns the exit code (0, or 130 when interrupted, 1 on launcher errors)."""
        self._bar.open(self._budget())
        try:
            return self._run()
        finally:
            self._bar.close()

    def _run(self) -> int:
        reap_dead_trials(self.study, self.sweep.spec.max_retry, self._say, self.sweep.spec.objective)
        # Each slot signals its own end. The main thread never waits in Thread.join(): a Ctrl-C landing
        # inside join() can mark a live thread as stopped (CPython 3.11), and the launcher would then
        # return while a trial still runs, leaving it RUNNING in the study. Ctrl-C interrupts a sleep.
        done = [threading.Event() for _ in range(self.jobs)]
        threads = [
            threading.Thread(target=self._slot, args=(d,), name=f"sweep-slot-{i}", daemon=True)
            for i, d in enumerate(done)
        ]
        previous = None
        if threading.current_thread() is threading.main_thread():
            # SIGTERM (a scheduler's preemption, `kill`) stops the sweep like Ctrl-C does.
            previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            for t in threads:
                t.start()
            while not all(d.is_set() for d in done):
                try:
                    time.sleep(0.2)
                except KeyboardInterrupt:
                    if not self.interrupt.is_set():
                        self.interrupt.set()
                        self._say(
                            "interrupted: asking running trials to stop; they are marked FAILED and "
                            "re-enqueued, so re-running this command resumes the study. "
                            "Ctrl-C again to kill them now."
                        )
                    else:
                        self.kill.set()
                        self._say("killing running trials")
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        if self.interrupt.is_set():
            return EXIT_INTERRUPTED
        return 1 if self.errors else 0

    def _slot(self, done: threading.Event) -> None:
        try:
            self._worker()
        finally:
            done.set()

    def _worker(self) -> None:
        consecutive_errors = 0
        while not self.interrupt.is_set():
            try:
                trial = self._next_trial()
            except Exception as exc:  # storage unreachable and the like: stop this slot, report it
                self.errors.append(f"cannot get the next trial: {type(exc).__name__}: {exc}")
                return
            if trial is None:
                return
            self._bar.refresh()
            try:
                outcome = self._run_trial(trial)
                consecutive_errors = 0
            except Exception as exc:  # a launcher-side error on one trial: record it and go on
                consecutive_errors += 1
                msg = f"launcher error: {type(exc).__name__}: {exc}"
                self.errors.append(f"trial {trial.number}: {msg}")
                self._finish_failed(trial, msg, tail="")
                outcome = TrialOutcome(trial.number, TrialState.FAIL, error=msg)
            self.outcomes.append(outcome)
            self._bar.refresh()
            if not self.quiet:
                self._say(trial_line(outcome, self.sweep.spec.objective.metric, trial.params))
            if consecutive_errors >= MAX_LAUNCHER_ERRORS:
                return

    def _started_count(self) -> int:
        trials = self.study.get_trials(deepcopy=False)
        superseded = superseded_numbers(trials)
        counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
        return sum(1 for t in trials if t.state in counted and t.number not in superseded)

    def _foreign_running(self) -> bool:
        return any(
            t.user_attrs.get(WORKER_ATTR) != self.worker
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        )

    def _next_trial(self) -> optuna.Trial | None:
        while True:
            if self.interrupt.is_set():
                return None
            if self._deadline is not None and time.monotonic() >= self._deadline:
                with self._lock:
                    if not self._timed_out:
                        self._timed_out = True
                        self._say(f"timeout ({self.timeout:g} s) reached: starting no new trial")
                return None
            with self._lock:  # one slot at a time: the budget check and the pop/ask go together
                reap_dead_trials(self.study, self.sweep.spec.max_retry, self._say, self.sweep.spec.objective)
                if self.n_trials is None or self._started_count() < self.n_trials:
                    trial = self._pop_waiting()
                    if trial is None and not self.sweep.is_grid:
                        with warnings.catch_warnings():
                            # Optuna advises optimize() with heartbeats; we send them ourselves (see top).
                            warnings.filterwarnings("ignore", message="Heartbeat of storage")
                            trial = self.study.ask()
                    if trial is not None:
                        self._claim(trial)
                        return trial
            # Nothing to start. With heartbeats, stay while other workers' trials run: if one of them
            # dies, its trial is re-enqueued and this launcher takes it over.
            if not (self._heartbeat and self._foreign_running()):
                return None
            if not self._waiting_announced:
                self._waiting_announced = True
                self._say(
                    "nothing left to start; waiting while other workers' trials run, to take over any whose "
                    "worker dies (Ctrl-C stops waiting)"
                )
            time.sleep(min(5.0, self.sweep.spec.heartbeat_interval / 2))

    def _pop_waiting(self) -> optuna.Trial | None:
        waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        # Retries first: under a trial budget they stand in for trials that already counted.
        waiting.sort(key=lambda t: (retried_trial_number(t) is None, t.number))
        return claim_waiting(self.study, waiting)

    def _claim(self, trial: optuna.Trial) -> None:
        if self._heartbeat:
            record_heartbeat(self.study, trial)
        trial.set_user_attr(WORKER_ATTR, self.worker)
        for key in (ERROR_ATTR, LOG_TAIL_ATTR, EXIT_ATTR, STATUS_ATTR):  # a retry inherits these
            if key in trial.user_attrs:
                trial.set_user_attr(key, None)

    # -- one trial --

    def _inherited_run_dir(self, trial: optuna.Trial) -> Path | None:
        """A retry runs in the run dir of the trial it retries, so the run resumes from that trial's
        last checkpoint instead of step 0."""
        failed = retried_trial_number(stored_trial(self.study, trial))
        if failed is None:
            return None
        for t in self.study.get_trials(deepcopy=False):
            if t.number == failed and t.user_attrs.get(RUN_DIR_ATTR):
                return Path(t.user_attrs[RUN_DIR_ATTR])
        return None

    def _run_trial(self, trial: optuna.Trial) -> TrialOutcome:
        values = suggest_values(trial, self.sweep)
        recipe = self.sweep.recipe_of(trial)
        run_dir = self._inherited_run_dir(trial)
        if run_dir is None:
            run_dir = self.out_dir / f"trial-{trial.number:04d}"
            aside = set_aside(run_dir)
            if aside is not None:
                self._say(
                    f"trial {trial.number}: {run_dir} already existed (not from this study); moved to {aside}"
                )
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / STOP_FILE).unlink(missing_ok=True)
        trial.set_user_attr(RUN_DIR_ATTR, str(run_dir))
        started = time.monotonic()
        # The run's output (per-step lines, warnings, tracebacks) goes to its log file only, never to
        # the launcher's terminal, where the bar and one line per finished trial say how it goes.
        with open(run_dir / TRIAL_LOG, "wb") as out:
            proc = subprocess.Popen(
                trial_command(self.train_command, self.sweep, recipe, run_dir, values),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=trial_env(self.jobs),
                start_new_session=True,  # Ctrl-C reaches the launcher only; it decides what the trial does
            )
            try:
                code, series, stop_reason = self._watch(trial, proc, run_dir)
            finally:
                if proc.poll() is None:  # the launcher itself is failing: do not leave the run behind
                    terminate(proc)
        outcome = self._finish(trial, run_dir, code, series, stop_reason)
        outcome.wall_s = time.monotonic() - started
        return outcome

    def _watch(
        self, trial: optuna.Trial, proc: subprocess.Popen, run_dir: Path
    ) -> tuple[int, list[tuple[int, float]], str | None]:
        metric = self.sweep.spec.objective.metric
        tail = MetricsTail(run_dir / C.METRICS_FILE)
        series: list[tuple[int, float]] = []
        reported: set[int] = set()
        stop_reason: str | None = None
        stop_at = term_at = next_beat = 0.0
        while True:
            code = proc.poll()
            for row in tail.read():
                if metric not in row or row.get("step") is None:
                    continue
                step, value = int(row["step"]), float(row[metric])
                series.append((step, value))
                if stop_reason is None and step not in reported and is_finite(value):
                    reported.add(step)
                    try:
                        trial.report(value, step)
                        if trial.should_prune():
                            stop_reason = "pruned"
                    except UpdateFinishedTrialError:
                        # Another worker failed this trial (our heartbeat lapsed) and re-enqueued it.
                        stop_reason = "superseded"
                    if stop_reason is not None:
                        request_stop(run_dir, stop_reason)
                        stop_at = time.monotonic()
            if code is not None:
                return code, series, stop_reason
            now = time.monotonic()
            if stop_reason is None and self.interrupt.is_set():
                stop_reason = "interrupted"
                request_stop(run_dir, stop_reason)
                stop_at = now
            if (
                stop_reason is not None
                and not term_at
                and (self.kill.is_set() or now - stop_at > STOP_GRACE_S)
            ):
                signal_group(proc, signal.SIGTERM)
                term_at = now
            if term_at and now - term_at > TERM_GRACE_S:
                signal_group(proc, signal.SIGKILL)
            if self._heartbeat and now >= next_beat:
                record_heartbeat(self.study, trial)
                next_beat = now + self.sweep.spec.heartbeat_interval
            time.sleep(POLL_S)

    def _finish(
        self,
        trial: optuna.Trial,
        run_dir: Path,
        code: int,
        series: list[tuple[int, float]],
        stop_reason: str | None,
    ) -> TrialOutcome:
        summary = read_summary(run_dir)
        status = summary.get("status")
        trial.set_user_attr(EXIT_ATTR, code)
        trial.set_user_attr(STATUS_ATTR, status)
        if "global_step" in summary:
            trial.set_user_attr("global_step", summary["global_step"])
        n = trial.number
        if stop_reason == "superseded":
            note = "taken over by another worker (its heartbeat lapsed); left to the retry"
            return TrialOutcome(n, TrialState.FAIL, error="superseded", note=note)
        if stop_reason == "pruned":
            self.study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
            step = series[-1][0] if series else "?"
            note = f"at step {step}, stopped at step {summary.get('global_step', '?')}"
            return TrialOutcome(n, TrialState.PRUNED, value=series[-1][1] if series else None, note=note)
        if code == 0 and status in (None, "completed"):
            objective = self.sweep.spec.objective
            value = objective_value(series, objective.value, objective.direction)
            if value is None:
                msg = (
                    f"the run completed but never logged the objective {objective.metric!r} "
                    "(is eval.batches > 0 and eval.every_n_steps <= the budget?)"
                )
                self._finish_failed(trial, msg, tail="")
                return TrialOutcome(n, TrialState.FAIL, error=msg)
            self.study.tell(trial, value, skip_if_finished=True)
            return TrialOutcome(n, TrialState.COMPLETE, value=value)
        if stop_reason == "interrupted":
            msg = "interrupted by the user (Ctrl-C); re-enqueued"
            frozen = self._finish_failed(trial, msg, tail="")
            if frozen is not None:
                retry(self.study, frozen, max_retry=None)
            return TrialOutcome(n, TrialState.FAIL, error=msg)
        msg, tail = error_from_log(run_dir / TRIAL_LOG, code)
        frozen = self._finish_failed(trial, msg, tail)
        if died_of_a_signal(code, status) and frozen is not None:
            limit = self.sweep.spec.max_retry
            if retry(self.study, frozen, max_retry=limit):
                note = f"re-enqueued to resume from its checkpoint (max_retry {limit})"
                return TrialOutcome(n, TrialState.FAIL, error=msg, note=note)
        return TrialOutcome(n, TrialState.FAIL, error=msg)

    def _finish_failed(self, trial: optuna.Trial, message: str, tail: str) -> FrozenTrial | None:
        try:
            trial.set_user_attr(ERROR_ATTR, message)
            if tail:
                trial.set_user_attr(LOG_TAIL_ATTR, tail)
            return self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        except UpdateFinishedTrialError:
            return None


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
