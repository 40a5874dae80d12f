"""The launcher's machinery with a fake trainer (same contract as `train`, milliseconds per trial):
exactly-once grid cells across launchers, failures, dead workers, interruption and resume, budgets,
pruning, summaries. tests/sweeps/test_real_sweeps.py runs the real `train` path."""

from __future__ import annotations

import signal
from collections import Counter

import pytest
from optuna.trial import TrialState

from mosaics_lab.sweeps.report import PLOTS_DIR, SUMMARY_CSV, SUMMARY_MD
from mosaics_lab.sweeps.study import ERROR_ATTR, WORKER_ATTR

from .conftest import load_trials, read_ledger, run_sweep, start_sweep, wait_for, write_sweep

GRID6 = {
    "sampler": {"type": "grid"},
    "pruner": {"type": "none"},
    "grid": [{"train.lr": 0.001}, {"train.lr": 0.002}, {"train.lr": 0.003}],
    "seeds": [0, 1],
}


def cell_key(params: dict) -> tuple:
    """(lr, seed) of Optuna params or of the fake trainer's ledger (where values are override text)."""
    seed = params.get("seed")
    return (float(params["train.lr"]), None if seed is None else int(seed))


def starts(ledger) -> Counter:
    return Counter(cell_key(e["params"]) for e in read_ledger(ledger) if e["event"] == "start")


def live_trials(trials):
    """Trials not superseded by a retry."""
    superseded = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return [t for t in trials if t.number not in superseded]


def test_grid_cells_run_exactly_once_across_two_launchers(tmp_path, ledger, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_S", "0.12")  # ~0.8 s per trial: the two launchers overlap
    path = write_sweep(tmp_path, **GRID6)
    out = tmp_path / "runs"
    procs = [start_sweep(path, out) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    trials = load_trials(out)
    assert len(trials) == 6, "each cell is enqueued once, by the launcher that created the study"
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(cell_key(t.params) for t in trials) == sorted(
        (lr, s) for lr in (0.001, 0.002, 0.003) for s in (0, 1)
    )
    assert set(starts(ledger).values()) == {1}, starts(ledger)  # every cell trained exactly once
    assert len({t.user_attrs[WORKER_ATTR] for t in trials}) == 2, "both launchers ran trials"


def test_failing_trial_is_failed_with_its_error_and_the_others_complete(tmp_path, ledger, capsys):
    path = write_sweep(
        tmp_path,
        sampler={"type": "grid"},
        pruner={"type": "none"},
        grid=[{"train.lr": 0.001}, {"train.lr": 0.002, "train.warmup_steps": 13}, {"train.lr": 0.003}],
    )
    out = tmp_path / "runs"
    assert run_sweep(path, out, "--jobs", "2") == 0
    by_lr = {t.params["train.lr"]: t for t in load_trials(out)}
    assert by_lr[0.001].state == by_lr[0.003].state == TrialState.COMPLETE
    failed = by_lr[0.002]
    assert failed.state == TrialState.FAIL
    assert "deliberate crash" in failed.user_attrs[ERROR_ATTR]
    assert "Traceback" in failed.user_attrs["log_tail"]
    # the summary shows it, with its error
    md = (out / "s" / SUMMARY_MD).read_text()
    assert "FAIL" in md and "deliberate crash" in md
    assert (out / "s" / SUMMARY_CSV).read_text().count("\n") == 4  # header + 3 trials


def test_summary_table_and_plots_are_written(tmp_path, ledger):
    path = write_sweep(
        tmp_path,
        sampler={"type": "random", "seed": 0},
        pruner={"type": "none"},
        n_trials=4,
        space={
            "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "train.warmup_steps": {"type": "int", "low": 0, "high": 10},
        },
    )
    out = tmp_path / "runs"
    assert run_sweep(path, out) == 0
    study_dir = out / "s"
    header = (study_dir / SUMMARY_CSV).read_text().splitlines()[0].split(",")
    assert header[:5] == ["trial", "state", "value", "step", "duration_s"]
    assert {"train.lr", "train.warmup_steps", "run_dir"} <= set(header)
    plots = {p.name for p in (study_dir / PLOTS_DIR).glob("*.png")}
    assert {"history.png", "importances.png", "intermediate.png", "slice.png"} <= plots
    md = (study_dir / SUMMARY_MD).read_text()
    assert "best: trial" in md and "![history]" in md
    for p in (study_dir / PLOTS_DIR).glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_too_few_trials_skip_plots_with_a_note(tmp_path, ledger):
    path = write_sweep(
        tmp_path,
        sampler={"type": "grid"},
        grid=[{"train.lr": 0.001, "train.warmup_steps": 13}],  # the only trial fails
    )
    out = tmp_path / "runs"
    assert run_sweep(path, out) == 0
    md = (out / "s" / SUMMARY_MD).read_text()
    assert "history: skipped (needs a completed trial)" in md
    assert "importances: skipped" in md


def test_budget_is_per_study_and_rerunning_never_redoes_finished_trials(tmp_path, ledger):
    path = write_sweep(
        tmp_path,
        sampler={"type": "random", "seed": 1},
        pruner={"type": "none"},
        n_trials=3,
        space={"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
    )
    out = tmp_path / "runs"
    assert run_sweep(path, out, "--jobs", "2") == 0
    assert len(load_trials(out)) == 3
    assert run_sweep(path, out) == 0  # the budget is spent: nothing runs
    assert len(read_ledger(ledger)) == 6  # 3 starts + 3 ends
    assert run_sweep(path, out, "--n-trials", "5") == 0  # a larger budget continues the study
    trials = load_trials(out)
    assert len(trials) == 5 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.params["train.lr"] for t in trials}) == 5, "a resumed launcher does not replay old samples"
    assert sum(e["event"] == "start" for e in read_ledger(ledger)) == 5


def test_rerun_with_a_different_sweep_is_refused(tmp_path, ledger, capsys):
    out = tmp_path / "runs"
    assert run_sweep(write_sweep(tmp_path, sampler={"type": "grid"}, grid=[{"train.lr": 0.001}]), out) == 0
    changed = write_sweep(tmp_path, sampler={"type": "grid"}, grid=[{"train.lr": 0.002}])
    assert run_sweep(changed, out) == 2
    assert "created from a different sweep (it differs in: cells)" in capsys.readouterr().err


def test_pruning_stops_a_diverging_trial_before_its_last_step(tmp_path, ledger):
    path = write_sweep(
        tmp_path,
        sampler={"type": "grid"},
        pruner={"type": "median", "startup_trials": 1, "warmup_steps": 2},
        grid=[{"train.lr": 0.001}, {"train.lr": 0.5}],  # the second one's loss rises at every step
        overrides={"train.max_steps": 40},
    )
    out = tmp_path / "runs"
    assert run_sweep(path, out) == 0
    good, bad = load_trials(out)
    assert good.state == TrialState.COMPLETE and good.user_attrs["global_step"] == 40
    assert bad.state == TrialState.PRUNED
    assert bad.user_attrs["status"] == "pruned"  # the run itself recorded why it stopped
    assert bad.user_attrs["global_step"] < 40
    assert max(bad.intermediate_values) <= 8  # reported at training steps, pruned soon after warm-up


def test_interrupt_stops_cleanly_and_rerunning_resumes(tmp_path, ledger):
    path = write_sweep(tmp_path, **{**GRID6, "overrides": {"train.max_steps": 12}})
    out = tmp_path / "runs"
    proc = start_sweep(path, out, env={"FAKE_STEP_S": "0.15"})
    wait_for(lambda: sum(e["event"] == "end" for e in read_ledger(ledger)) >= 1, what="a finished trial")
    wait_for(lambda: sum(e["event"] == "start" for e in read_ledger(ledger)) >= 2, what="a second trial")
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, output
    assert "re-running this command resumes" in output
    trials = load_trials(out)
    assert not [t for t in trials if t.state == TrialState.RUNNING], "no trial is left running"
    interrupted = [t for t in trials if t.state == TrialState.FAIL]
    assert len(interrupted) == 1 and "interrupted" in interrupted[0].user_attrs[ERROR_ATTR]
    ends = [e for e in read_ledger(ledger) if e["event"] == "end"]
    assert ends[-1]["status"] == "interrupted" and ends[-1]["step"] < 12, "the run stopped at a step, cleanly"
    done_before = {cell_key(t.params) for t in trials if t.state == TrialState.COMPLETE}

    assert run_sweep(path, out) == 0  # resume
    trials = live_trials(load_trials(out))
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    counts = starts(ledger)
    assert all(counts[c] == 1 for c in done_before), "finished trials are not run again"
    assert counts[cell_key(interrupted[0].params)] == 2  # the interrupted one ran again
    assert sum(counts.values()) == 7


def kill_mid_trial(path, out, ledger, env=None):
    proc = start_sweep(path, out, env={"FAKE_STEP_S": "0.1", **(env or {})})
    wait_for(lambda: any(e["event"] == "start" for e in read_ledger(ledger)), what="a trial to start")
    proc.kill()
    proc.wait()
    # its trial's run notices the launcher is gone and stops by itself (no orphan training on)
    wait_for(
        lambda: any(e["event"] == "end" for e in read_ledger(ledger)), timeout=30, what="the orphan to stop"
    )
    assert read_ledger(ledger)[-1]["status"].startswith("stopped: the sweep launcher exited")


def test_rdb_killed_workers_trial_is_retried(tmp_path, ledger):
    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    path = write_sweep(
        tmp_path,
        sampler={"type": "grid"},
        pruner={"type": "none"},
        grid=[{"train.lr": 0.001}, {"train.lr": 0.002}],
        overrides={"train.max_steps": 30},
        storage=db,
        heartbeat_interval=1,
        grace_period=2,
    )
    out = tmp_path / "runs"
    kill_mid_trial(path, out, ledger)
    assert [t.state for t in load_trials(out, storage=db)][:1] == [TrialState.RUNNING]
    # a new launcher waits until the dead worker's heartbeat is stale, then retries its trial
    assert run_sweep(path, out) == 0
    trials = load_trials(out, storage=db)
    dead = trials[0]
    assert dead.state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == dead.params
    assert sorted(t.params["train.lr"] for t in live_trials(trials)) == [0.001, 0.002]


def test_journal_killed_worker_is_reported_then_retried(tmp_path, ledger, capsys):
    path = write_sweep(
        tmp_path,
        sampler={"type": "grid"},
        pruner={"type": "none"},
        grid=[{"train.lr": 0.001}, {"train.lr": 0.002}],
        overrides={"train.max_steps": 30},
    )
    out = tmp_path / "runs"
    kill_mid_trial(path, out, ledger)
    from mosaics_lab.cli import main

    capsys.readouterr()
    assert main(["sweep", str(path), "--out", str(out), "--status"]) == 0
    status = capsys.readouterr().out
    assert "RUNNING" in status and "worker dead" in status
    assert run_sweep(path, out) == 0
    trials = load_trials(out)
    assert trials[0].state == TrialState.FAIL and "died" in trials[0].user_attrs[ERROR_ATTR]
    assert sorted(t.params["train.lr"] for t in live_trials(trials)) == [0.001, 0.002]
    assert all(t.state == TrialState.COMPLETE for t in live_trials(trials))


@pytest.mark.parametrize("jobs", ["1", "3"])
def test_status_lists_every_trial(tmp_path, ledger, capsys, jobs):
    path = write_sweep(tmp_path, sampler={"type": "grid"}, grid=[{"train.lr": 0.001}, {"train.lr": 0.002}])
    out = tmp_path / "runs"
    assert run_sweep(path, out, "--jobs", jobs) == 0
    from mosaics_lab.cli import main

    capsys.readouterr()
    assert main(["sweep", str(path), "--out", str(out), "--status"]) == 0
    status = capsys.readouterr().out
    assert "2 COMPLETE" in status
    assert status.count("trial-000") == 2 and "| train.lr |" in status


def test_n_trials_caps_a_grid_and_a_rerun_runs_the_remaining_cells(tmp_path, ledger):
    path = write_sweep(tmp_path, **GRID6)
    out = tmp_path / "runs"
    assert run_sweep(path, out, "--n-trials", "2") == 0
    states = Counter(t.state for t in load_trials(out))
    assert states == Counter({TrialState.COMPLETE: 2, TrialState.WAITING: 4})
    assert run_sweep(path, out) == 0
    assert all(t.state == TrialState.COMPLETE for t in load_trials(out))
    assert set(starts(ledger).values()) == {1} and len(starts(ledger)) == 6


def test_timeout_starts_no_new_trial_after_it(tmp_path, ledger, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_S", "0.1")  # each trial outlives the timeout
    path = write_sweep(tmp_path, **{**GRID6, "timeout": 0.5, "overrides": {"train.max_steps": 10}})
    out = tmp_path / "runs"
    assert run_sweep(path, out, "--jobs", "2") == 0
    trials = load_trials(out)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2, "the two slots' first trials finish"
    assert sum(t.state == TrialState.WAITING for t in trials) == 4
    assert "timeout (0.5 s) reached" in capsys.readouterr().out


def test_hyperband_prunes_on_the_recipes_step_budget(tmp_path):
    from mosaics_lab.sweeps.spec import resolve_sweep
    from mosaics_lab.sweeps.study import build_pruner

    sweep = resolve_sweep(
        write_sweep(
            tmp_path,
            pruner={"type": "hyperband", "warmup_steps": 10, "reduction_factor": 3},
            overrides={"train.max_steps": 90},
            space={"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2}},
            n_trials=3,
        )
    )
    pruner = build_pruner(sweep)
    assert type(pruner).__name__ == "HyperbandPruner"
    assert (pruner._min_resource, pruner._max_resource, pruner._reduction_factor) == (10, 90, 3)


def test_rdb_a_dead_worker_on_another_host_is_retried_after_its_heartbeat_lapses(tmp_path, ledger):
    # Its pid cannot be checked from here: only the heartbeat tells (Optuna wraps an RDBStorage in
    # its _CachedStorage, so heartbeats were once never sent nor checked).
    from mosaics_lab.sweeps import optuna_adapter
    from mosaics_lab.sweeps.spec import resolve_sweep
    from mosaics_lab.sweeps.storage import make_storage
    from mosaics_lab.sweeps.study import open_study

    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    path = write_sweep(
        tmp_path,
        sampler={"type": "grid"},
        pruner={"type": "none"},
        grid=[{"train.lr": 0.001}, {"train.lr": 0.002}],
        storage=db,
        heartbeat_interval=1,
        grace_period=2,
    )
    out = tmp_path / "runs"
    sweep = resolve_sweep(path)
    study = open_study(sweep, make_storage(sweep, out / "s"))
    first = study.get_trials(deepcopy=False)[0]
    claimed = optuna_adapter.claim_waiting(study, [first])  # a worker elsewhere takes cell 0 ...
    claimed.set_user_attr(WORKER_ATTR, "elsewhere:123:456")
    optuna_adapter.record_heartbeat(study, claimed)  # ... and dies after one heartbeat
    assert run_sweep(path, out) == 0
    trials = load_trials(out, storage=db)
    assert trials[0].state == TrialState.FAIL
    assert sorted(t.params["train.lr"] for t in live_trials(trials)) == [0.001, 0.002]
    assert all(t.state == TrialState.COMPLETE for t in live_trials(trials))
