"""Sweeps through the real `mosaics-lab train` path (tiny models, a few steps, CPU)."""

from __future__ import annotations

import json

from optuna.trial import TrialState

from mosaics_lab.analysis.compare import compare
from mosaics_lab.sweeps.report import PLOTS_DIR, SUMMARY_MD
from mosaics_lab.sweeps.study import ERROR_ATTR
from mosaics_lab.training.run import run_tensorboard_dir

from .conftest import load_trials, run_sweep, tiny_trial_overrides, write_sweep


def test_trials_are_normal_runs_failures_are_recorded_and_compare_reads_them(tmp_path, sweep_stories):
    path = write_sweep(
        tmp_path,
        sampler={"type": "grid"},
        pruner={"type": "none"},
        overrides=tiny_trial_overrides(sweep_stories),
        grid=[
            {"train.lr": 0.003},
            {"train.lr": 0.01},
            {"train.lr": 0.003, "data.path": str(tmp_path / "no-such-data")},  # fails when it runs
        ],
    )
    out = tmp_path / "runs"
    assert run_sweep(path, out, "--jobs", "2", fake=False) == 0
    trials = load_trials(out)
    ok = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(ok) == 2 and len(failed) == 1
    assert failed[0].user_attrs[ERROR_ATTR].startswith("user error (exit 2): mosaics-lab: error:")
    assert "no-such-data" in failed[0].user_attrs[ERROR_ATTR]
    for t in ok:
        run_dir = out / "s" / f"trial-{t.number:04d}"
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
        assert "train:\n" in (run_dir / "recipe.yaml").read_text()
        events = list(run_tensorboard_dir(run_dir).glob("events.out.tfevents*"))
        assert events and any(b"hparams" in e.read_bytes() for e in events)  # TensorBoard's HPARAMS tab
        assert t.value == json.loads((run_dir / "summary.json").read_text())["metrics"]["val/loss"]
        assert t.intermediate_values, "the objective was reported at training steps"
    assert (out / "s" / SUMMARY_MD).is_file() and (out / "s" / PLOTS_DIR / "history.png").is_file()

    result = compare([str(out / "s")], ["val/loss"], tmp_path / "cmp")
    assert len(result["runs"]) == 2  # the failed trial never got as far as being a run
    assert "| train.lr |" in result["table"] and "| 0.01 |" in result["table"]
    assert [p.name for p in result["plots"]] == ["val_loss.png"]


def test_pruning_stops_a_diverging_real_trial_cleanly(tmp_path, sweep_stories):
    path = write_sweep(
        tmp_path,
        sampler={"type": "grid"},
        pruner={"type": "median", "startup_trials": 1, "warmup_steps": 2},
        overrides=tiny_trial_overrides(sweep_stories),
        grid=[
            {"train.lr": 0.003, "train.max_steps": 8},
            {"train.lr": 3.0, "train.max_steps": 200},  # diverges: val/loss ~ 100+ after one step
        ],
    )
    out = tmp_path / "runs"
    assert run_sweep(path, out, fake=False) == 0
    good, bad = load_trials(out)
    assert good.state == TrialState.COMPLETE
    assert bad.state == TrialState.PRUNED
    summary = json.loads((out / "s" / "trial-0001" / "summary.json").read_text())
    assert summary["status"] == "pruned"
    assert summary["global_step"] < 50, "stopped long before its 200 steps"
    assert (out / "s" / "trial-0001" / "checkpoints" / "last.ckpt").is_file(), (
        "a clean stop keeps its checkpoint"
    )
