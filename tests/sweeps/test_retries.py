"""Sweeps lose no work: a trial killed by a signal resumes from its own checkpoint in its own run dir;
a killed launcher's trials are finished from their checkpoints on the next run, and a trial whose run
had completed is recorded, never run again. With the fake trainer (which resumes like a real run)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from optuna.trial import TrialState

from mosaics_lab import constants as C

from .conftest import load_trials, read_ledger, run_sweep, start_sweep, wait_for, write_sweep
from .test_launcher import cell_key, live_trials

ONE_CELL = {"sampler": {"type": "grid"}, "pruner": {"type": "none"}, "grid": [{"train.lr": 0.001}]}


def _metric_steps(run_dir: Path) -> list[int]:
    lines = (run_dir / C.METRICS_FILE).read_text().splitlines()
    return [json.loads(ln)["step"] for ln in lines if ln]


def test_a_sigkilled_trial_is_retried_from_its_own_checkpoint(tmp_path, ledger, monkeypatch):
    path = write_sweep(tmp_path, **{**ONE_CELL, "overrides": {"train.max_steps": 8}})
    assert run_sweep(path, tmp_path / "straight") == 0
    straight = load_trials(tmp_path / "straight")[0].value
    ledger.unlink()

    monkeypatch.setenv("FAKE_SIGKILL_AT", "5")  # the OOM killer, after step 5
    out = tmp_path / "runs"
    assert run_sweep(path, out) == 0
    trials = load_trials(out)
    killed, retry = trials
    assert killed.state == TrialState.FAIL and "killed by SIGKILL" in killed.user_attrs["error"]
    assert retry.state == TrialState.COMPLETE and retry.system_attrs["failed_trial"] == killed.number
    assert retry.value == straight
    first, second = [e for e in read_ledger(ledger) if e["event"] == "start"]
    assert second["run_dir"] == first["run_dir"] == killed.user_attrs["run_dir"]  # its own run dir
    assert second["resumed_from"] == 5  # from its checkpoint, not step 0
    assert _metric_steps(Path(first["run_dir"])) == [2, 4, 6, 8]


def test_retries_of_a_killed_trial_stop_at_max_retry(tmp_path, ledger, monkeypatch):
    path = write_sweep(tmp_path, **{**ONE_CELL, "overrides": {"train.max_steps": 8}, "max_retry": 0})
    monkeypatch.setenv("FAKE_SIGKILL_AT", "5")
    out = tmp_path / "runs"
    run_sweep(path, out)
    assert [t.state for t in load_trials(out)] == [TrialState.FAIL]  # no retry left


GRID3 = {
    "sampler": {"type": "grid"},
    "pruner": {"type": "none"},
    "grid": [{"train.lr": 0.001}, {"train.lr": 0.002}, {"train.lr": 0.003}],
    "overrides": {"train.max_steps": 12},
}


def _kill_launcher_during_second_trial(path, out, ledger):
    proc = start_sweep(path, out, env={"FAKE_STEP_S": "0.1"})
    wait_for(lambda: sum(e["event"] == "end" for e in read_ledger(ledger)) >= 1, what="a finished trial")
    wait_for(lambda: sum(e["event"] == "start" for e in read_ledger(ledger)) >= 2, what="a second trial")
    wait_for(lambda: Path(read_ledger(ledger)[-1]["run_dir"], "fake.ckpt").exists(), what="a checkpoint")
    proc.kill()
    proc.wait()
    wait_for(lambda: sum(e["event"] == "end" for e in read_ledger(ledger)) >= 2, what="the orphan to stop")
    return [e for e in read_ledger(ledger) if e["event"] == "start"][-1]


def test_a_killed_launchers_trial_resumes_from_its_checkpoint_and_nothing_runs_twice(tmp_path, ledger):
    path = write_sweep(tmp_path, **GRID3)
    out = tmp_path / "runs"
    orphan = _kill_launcher_during_second_trial(path, out, ledger)
    done_before = {cell_key(t.params) for t in load_trials(out) if t.state == TrialState.COMPLETE}
    assert len(done_before) == 1

    assert run_sweep(path, out) == 0
    trials = live_trials(load_trials(out))
    assert sorted(cell_key(t.params) for t in trials) == [(0.001, None), (0.002, None), (0.003, None)]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    starts = [e for e in read_ledger(ledger) if e["event"] == "start"]
    counts = Counter(cell_key(e["params"]) for e in starts)
    assert all(counts[c] == 1 for c in done_before), "a completed trial ran again"
    again = [e for e in starts if e["run_dir"] == orphan["run_dir"]]
    assert len(again) == 2 and again[1]["resumed_from"] > 0, "the orphan restarted from step 0"
    assert _metric_steps(Path(orphan["run_dir"])) == [2, 4, 6, 8, 10, 12]


def test_a_dead_launchers_trial_whose_run_completed_is_recorded_not_rerun(tmp_path, ledger):
    path = write_sweep(tmp_path, **GRID3)
    out = tmp_path / "runs"
    orphan = _kill_launcher_during_second_trial(path, out, ledger)
    # the run had finished just as its launcher died: the study still says RUNNING
    run_dir = Path(orphan["run_dir"])
    (run_dir / C.SUMMARY_FILE).write_text(json.dumps({"status": "completed", "global_step": 12}))
    last_logged = json.loads((run_dir / C.METRICS_FILE).read_text().splitlines()[-1])["val/loss"]

    assert run_sweep(path, out) == 0
    starts = [e for e in read_ledger(ledger) if e["event"] == "start"]
    assert sum(e["run_dir"] == orphan["run_dir"] for e in starts) == 1, "the completed run ran again"
    recorded = [t for t in load_trials(out) if t.user_attrs.get("run_dir") == orphan["run_dir"]]
    assert [t.state for t in recorded] == [TrialState.COMPLETE] and recorded[0].value == last_logged
    assert len(live_trials(load_trials(out))) == 3


def test_an_eval_objective_is_refused_when_the_sweep_is_validated(tmp_path):
    from mosaics_lab.sweeps.spec import SweepError, load_sweep_spec

    path = write_sweep(tmp_path, objective={"metric": "eval/mqar/accuracy", "direction": "maximize"})
    with pytest.raises(SweepError, match="eval/... metrics are written by `mosaics-lab eval`"):
        load_sweep_spec(path)


def test_a_failed_trial_is_left_alone_unless_retry_failed_then_it_resumes_in_its_own_run_dir(
    tmp_path, ledger, monkeypatch
):
    path = write_sweep(tmp_path, **GRID3)
    out = tmp_path / "runs"
    monkeypatch.setenv("FAKE_CRASH_AT", "6")  # a bug that stops every trial after step 6, once each
    assert run_sweep(path, out) == 0
    assert [t.state for t in load_trials(out)] == [TrialState.FAIL] * 3
    monkeypatch.delenv("FAKE_CRASH_AT")  # "fixed"

    assert run_sweep(path, out) == 0  # a plain re-run does not retry a trial that failed by itself
    assert len(load_trials(out)) == 3
    assert sum(e["event"] == "start" for e in read_ledger(ledger)) == 3

    assert run_sweep(path, out, "--retry-failed") == 0
    trials = live_trials(load_trials(out))
    assert sorted(cell_key(t.params) for t in trials) == [(0.001, None), (0.002, None), (0.003, None)]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    starts = [e for e in read_ledger(ledger) if e["event"] == "start"]
    assert len(starts) == 6
    for first, again in zip(starts[:3], starts[3:]):
        assert again["run_dir"] == first["run_dir"] and again["resumed_from"] == 6
        assert _metric_steps(Path(first["run_dir"])) == [2, 4, 6, 8, 10, 12]

    assert run_sweep(path, out, "--retry-failed") == 0  # nothing failed is left: nothing runs
    assert sum(e["event"] == "start" for e in read_ledger(ledger)) == 6


def test_retry_failed_with_status_is_refused_with_what_to_run_instead(tmp_path, capsys):
    path = write_sweep(tmp_path, **GRID3)
    assert run_sweep(path, tmp_path / "runs", "--status", "--retry-failed") == 2
    err = capsys.readouterr().err
    assert "--retry-failed" in err and "--status" in err and "without --status" in err
