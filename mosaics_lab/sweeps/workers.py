"""Which launcher runs a trial, whether it is still alive, and what happens to the trials of one that
died.

A trial records its worker as ``host:pid:start-time`` (the start time from ``/proc``, so a reused pid
is not taken for the worker). Journal storage: a trial left RUNNING by a launcher that died on this
host is found at the next start; if its run had completed, its value is read from the run's files and
recorded (never run again); otherwise it is marked FAILED and re-enqueued (not counted against
``max_retry``), and the retry resumes from its checkpoint. Trials of workers on other hosts are only
reported by ``--status``. RDB storages: Optuna's heartbeat check fails and re-enqueues them.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from mosaics_lab import constants as C
from mosaics_lab.sweeps.optuna_adapter import fail_running, heartbeat_enabled
from mosaics_lab.sweeps.runfiles import MetricsTail, objective_value, read_summary
from mosaics_lab.sweeps.study import ERROR_ATTR, RUN_DIR_ATTR, WORKER_ATTR, retry
from mosaics_lab.training.stopfile import launcher_id, pid_alive


def _process_start(pid: int) -> str:
    """The process's start time in clock ticks (Linux), so a reused pid is not taken for the worker."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "0"
    return stat.rsplit(")", 1)[1].split()[19]


def worker_id() -> str:
    return f"{launcher_id()}:{_process_start(os.getpid())}"


def worker_is_dead(worker: str) -> bool | None:
    """True/False for a worker on this host; None when it ran elsewhere (cannot tell)."""
    host, _, rest = worker.partition(":")
    pid, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    if not pid_alive(int(pid)):
        return True
    return bool(start) and start != "0" and _process_start(int(pid)) not in (start, "0")


def reap_dead_trials(
    study: optuna.Study, max_retry: int | None, log: Any = print, objective: Any = None
) -> list[int]:
    """Fail (and re-enqueue) trials whose worker is dead. RDB: Optuna's heartbeat check. Journal: the
    trial's worker process on this host is gone; if its run had completed, its value is recorded from
    the run's files (``objective``: the sweep's ObjectiveSpec) instead. Returns the numbers of the
    trials failed here."""
    if heartbeat_enabled(study):
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        optuna.storages.fail_stale_trials(study)
        after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        gone = sorted(before - after)  # stale, or simply finished meanwhile: tell them apart
        stale = [
            t.number
            for t in study.get_trials(deepcopy=False)
            if t.number in gone and t.state == TrialState.FAIL
        ]
        for n in stale:
            log(
                f"trial {n}: its worker stopped sending heartbeats; marked FAILED and re-enqueued (max_retry)"
            )
        return stale
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get(WORKER_ATTR)
        if not worker or not worker_is_dead(worker):
            continue
        if _record_finished_run(study, t, objective, log):
            continue  # its run had completed: recorded, never run again
        error = f"its worker {worker} died while running it (found at launcher start)"
        failed_trial = fail_running(study, t, {ERROR_ATTR: error})
        if failed_trial is None:
            continue  # another launcher got there first
        # The trial did not fail, its launcher died: the retry (which resumes from the trial's own
        # checkpoint in its own run dir) does not count against max_retry.
        retried = retry(study, failed_trial, None)
        then = " and re-enqueued (it resumes from its checkpoint)" if retried else ""
        log(f"trial {t.number}: its worker {worker} died; marked FAILED{then}")
        failed.append(t.number)
    return failed


def _record_finished_run(study: optuna.Study, trial: FrozenTrial, objective: Any, log: Any) -> bool:
    """A RUNNING trial whose run completed (its launcher died before recording it): tell its value
    from the run's own files. False when the run did not complete or its objective is missing."""
    run_dir = trial.user_attrs.get(RUN_DIR_ATTR)
    if objective is None or not run_dir or read_summary(Path(run_dir)).get("status") != "completed":
        return False
    series = [
        (int(row["step"]), float(row[objective.metric]))
        for row in MetricsTail(Path(run_dir) / C.METRICS_FILE).read()
        if objective.metric in row and row.get("step") is not None
    ]
    value = objective_value(series, objective.value, objective.direction)
    if value is None:
        return False
    try:
        study.tell(trial.number, value, skip_if_finished=True)
    except UpdateFinishedTrialError:
        return True
    log(f"trial {trial.number}: its worker died after its run completed; recorded COMPLETE {value:.6g}")
    return True
