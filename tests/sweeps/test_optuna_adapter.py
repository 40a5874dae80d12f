"""The exact Optuna behaviour the sweeps rely on beyond its public API (sweeps/optuna_adapter.py), on
both storages sweeps use: an Optuna upgrade that changes any of it fails here first."""

from __future__ import annotations

import time

import optuna
import pytest
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from mosaics_lab.sweeps import optuna_adapter as oa


@pytest.fixture(params=["journal", "sqlite"])
def study(request, tmp_path) -> optuna.Study:
    if request.param == "journal":
        storage = JournalStorage(JournalFileBackend(str(tmp_path / "journal.log")))
    else:
        storage = RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    return optuna.create_study(study_name="s", storage=storage)


def test_storage_and_trial_id_address_the_studys_trials(study):
    study.enqueue_trial({"x": 1})
    (t,) = study.get_trials()
    oa.storage_of(study).set_trial_user_attr(oa.trial_id(t), "k", "v")
    assert study.get_trials()[0].user_attrs == {"k": "v"}
    live = study.ask()
    assert oa.trial_id(live) == oa.trial_id(t)  # a live Trial and its FrozenTrial share the id


def test_enqueued_params_of_a_waiting_trial(study):
    study.enqueue_trial({"x": 1, "name": "a"})
    (t,) = study.get_trials()
    assert t.state == TrialState.WAITING and t.params == {}
    assert oa.enqueued_params(t) == {"x": 1, "name": "a"}


def test_claim_waiting_skips_trials_claimed_or_finished_by_others_and_keeps_the_order(study):
    for x in range(4):
        study.enqueue_trial({"x": x})
    stale = study.get_trials(deepcopy=False)  # as one worker saw the queue
    taken = study.ask()  # another worker claims trial 0 (the first waiting) ...
    assert taken.number == 0
    done = oa.claim_waiting(study, [stale[1]])  # ... and finishes trial 1
    assert done is not None
    study.tell(done, 1.0)
    claimed = oa.claim_waiting(study, [stale[0], stale[1], stale[3], stale[2]])
    assert claimed is not None and claimed.number == 3, "the candidates' order, not the trial order"
    assert study.get_trials()[3].state == TrialState.RUNNING
    assert claimed.suggest_float("x", 0, 10) == 3  # the enqueued value comes back
    assert oa.claim_waiting(study, [stale[3]]) is None, "a trial is claimed once"
    assert oa.claim_waiting(study, []) is None


def test_stored_trial_shows_a_live_trials_system_attrs(study):
    study.enqueue_trial({"x": 1})
    live = study.ask()
    assert oa.stored_trial(study, live).system_attrs["fixed_params"] == {"x": 1}


def test_fail_running_records_attrs_and_fails_once(study):
    study.ask()  # RUNNING, as a dead worker left it
    frozen = study.get_trials()[0]
    failed = oa.fail_running(study, frozen, {"error": "its worker died"})
    assert failed is not None and failed.state == TrialState.FAIL
    assert failed.user_attrs["error"] == "its worker died"
    assert oa.fail_running(study, frozen, {"error": "again"}) is None  # another launcher was first
    assert study.get_trials()[0].user_attrs["error"] == "its worker died"


def test_retry_callback_enqueues_the_same_params_and_keeps_the_series(study):
    study.enqueue_trial({"x": 2}, user_attrs={"cell": 5})
    first = study.ask()
    first.suggest_float("x", 0, 10)
    failed = study.tell(first, state=TrialState.FAIL)
    RetryHeartbeatStaleTrialCallback(max_retry=2)(study, failed)
    retry1 = study.get_trials()[-1]
    assert retry1.state == TrialState.WAITING and retry1.params == {"x": 2}
    assert retry1.user_attrs == {"cell": 5}
    assert oa.retried_trial_number(retry1) == 0 and oa.retry_history(retry1) == [0]
    assert oa.retried_trial_number(failed) is None and oa.retry_history(failed) == []
    # the retry of a retry still names the original trial; its history lists the whole series
    live = oa.claim_waiting(study, [retry1])
    failed1 = study.tell(live, state=TrialState.FAIL)
    RetryHeartbeatStaleTrialCallback(max_retry=2)(study, failed1)
    retry2 = study.get_trials()[-1]
    assert oa.retried_trial_number(retry2) == 0 and oa.retry_history(retry2) == [0, 1]
    # max_retry counts the series: a third failure is not re-enqueued
    failed2 = study.tell(oa.claim_waiting(study, [retry2]), state=TrialState.FAIL)
    RetryHeartbeatStaleTrialCallback(max_retry=2)(study, failed2)
    assert len(study.get_trials()) == 3


def test_heartbeats_on_a_database_fail_a_silent_trial(tmp_path):
    journal = optuna.create_study(storage=JournalStorage(JournalFileBackend(str(tmp_path / "j.log"))))
    assert not oa.heartbeat_enabled(journal)
    plain = optuna.create_study(storage=RDBStorage(f"sqlite:///{tmp_path / 'plain.db'}"))
    assert not oa.heartbeat_enabled(plain)
    storage = RDBStorage(f"sqlite:///{tmp_path / 'hb.db'}", heartbeat_interval=1, grace_period=4)
    study = optuna.create_study(storage=storage)
    assert oa.heartbeat_enabled(study)
    trial = study.ask()
    oa.record_heartbeat(study, trial)
    optuna.storages.fail_stale_trials(study)
    assert study.get_trials()[0].state == TrialState.RUNNING, "a fresh heartbeat keeps it running"
    time.sleep(5.5)  # SQLite keeps heartbeats to the second: > grace + 1 s
    optuna.storages.fail_stale_trials(study)
    assert study.get_trials()[0].state == TrialState.FAIL
