"""Every use of Optuna's private API (and of its undocumented conventions) in one place, each pinned
by tests/sweeps/test_optuna_adapter.py: an Optuna upgrade that changes one breaks that test, not a
sweep. Written against Optuna 5.1.

What the launcher needs that the public API does not give:
- the study's storage (``Study._storage``), whether it has heartbeats (``storages._heartbeat``) and
  a trial's storage id (``_trial_id``): heartbeats, the atomic claim of a waiting trial, and the
  attributes and state of a trial another worker ran, which ``Study.tell`` cannot set;
- claiming a WAITING trial in the launcher's order (retries first) and never sampling a new one:
  ``Study._pop_waiting_trial_id`` makes the same atomic WAITING -> RUNNING transition but in trial
  order, and ``ask``/``optimize`` sample a fresh trial when the queue is empty, which a grid worker
  must not do;
- building a ``Trial`` for a trial id (its constructor is public but "not recommended" for direct use);
- the parameters a WAITING trial was enqueued with (``system_attrs["fixed_params"]``);
- a retry's origin and history, kept by ``RetryHeartbeatStaleTrialCallback`` in system attributes and
  read by its (experimental) static methods.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState


def storage_of(study: optuna.Study) -> BaseStorage:
    return study._storage  # noqa: SLF001


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The id storages address a trial by; neither Trial nor FrozenTrial exposes it publicly."""
    return trial._trial_id  # noqa: SLF001


def heartbeat_enabled(study: optuna.Study) -> bool:
    """Whether the study's storage has heartbeats. A study wraps an RDBStorage in Optuna's private
    ``_CachedStorage``, so ``isinstance(storage, RDBStorage)`` is False for every study."""
    return is_heartbeat_enabled(storage_of(study))


def record_heartbeat(study: optuna.Study, trial: optuna.Trial) -> None:
    """What ``optimize`` does for each running trial on a storage with heartbeats."""
    storage_of(study).record_heartbeat(trial_id(trial))  # type: ignore[attr-defined]


def claim_waiting(study: optuna.Study, candidates: Sequence[FrozenTrial]) -> optuna.Trial | None:
    """The first of ``candidates`` (WAITING trials, in the order to try them) this process moves to
    RUNNING, as a live Trial; a candidate another worker claimed or finished first is skipped. The
    transition is atomic in every storage, so each trial is claimed by exactly one worker."""
    storage = storage_of(study)
    for t in candidates:
        try:
            if storage.set_trial_state_values(trial_id(t), state=TrialState.RUNNING):
                return optuna.Trial(study, trial_id(t))
        except UpdateFinishedTrialError:
            continue
    return None


def stored_trial(study: optuna.Study, trial: optuna.Trial) -> FrozenTrial:
    """A live trial's stored record (its system attributes included, which Trial does not show)."""
    return storage_of(study).get_trial(trial_id(trial))


def fail_running(
    study: optuna.Study, trial: FrozenTrial, user_attrs: Mapping[str, Any]
) -> FrozenTrial | None:
    """Set ``user_attrs`` on a RUNNING trial some other (dead) worker ran and mark it FAILED; None when
    another launcher finished it first."""
    storage = storage_of(study)
    try:
        for key, value in user_attrs.items():
            storage.set_trial_user_attr(trial_id(trial), key, value)
        if not storage.set_trial_state_values(trial_id(trial), TrialState.FAIL):
            return None
    except UpdateFinishedTrialError:
        return None
    return storage.get_trial(trial_id(trial))


def enqueued_params(trial: FrozenTrial) -> dict[str, Any]:
    """The parameters ``enqueue_trial`` gave a trial (a WAITING trial has no ``params`` yet)."""
    return dict(trial.system_attrs.get("fixed_params", {}))


def retried_trial_number(trial: FrozenTrial) -> int | None:
    """The trial a retry stands in for (the first of its series); None for a trial that is no retry."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


def retry_history(trial: FrozenTrial) -> list[int]:
    """The trials a retry follows, oldest first (empty for a trial that is no retry)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return list(RetryHeartbeatStaleTrialCallback.retry_history(trial))
