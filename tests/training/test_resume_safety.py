"""What a kill costs a run: nothing logged twice, nothing lost past the last checkpoint, a torn log
line or a damaged checkpoint is no obstacle to resuming, and one run dir has one trainer at a time."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import lightning as L
import pytest
import yaml

from mosaics_lab import constants as C
from mosaics_lab.cli import EXIT_USER_ERROR, main
from mosaics_lab.config import load_recipe
from mosaics_lab.training.run import train
from tests.conftest import REPO, tiny_overrides
from tests.training.test_train import losses_by_step, read_metrics, tensorboard_steps

GPT2_TINY = REPO / "recipes" / "gpt2_tiny.yaml"
HOLDER_FILE = ".lock.holder"  # who holds the run dir (mosaics_lab.training.runlock)


class CrashAt(L.Callback):
    """A crash (not an interrupt) after optimiser step ``step``: nothing is saved on the way out."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def _recipe(stories_dir, run_dir, steps: int, *extra: str):
    overrides = [*tiny_overrides(stories_dir, run_dir, steps=steps), "eval.batches=0", *extra]
    return load_recipe(GPT2_TINY, overrides)


def _assert_no_duplicate_steps(run_dir, steps: int) -> None:
    logged = [row["step"] for row in read_metrics(run_dir) if C.TRAIN_LOSS in row]
    assert logged == list(range(steps)), logged
    tb = tensorboard_steps(run_dir, C.TRAIN_LOSS)
    assert sorted(tb) == list(range(steps)), f"TensorBoard train/loss steps: {tb}"


def test_a_crash_before_the_first_checkpoint_restarts_its_curves_from_step_zero(stories_dir, tmp_path):
    run = tmp_path / "run"
    recipe = _recipe(stories_dir, run, 8)  # default checkpoint_every_n_steps=100: no checkpoint yet
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(recipe, callbacks=[CrashAt(5)])
    assert not (run / C.CHECKPOINT_DIR / C.LAST_CHECKPOINT).exists()
    assert max(losses_by_step(run)) >= 3  # the crashed process logged steps 0..3
    train(recipe)
    _assert_no_duplicate_steps(run, 8)


def test_a_torn_last_metrics_line_does_not_stop_the_resume(stories_dir, tmp_path):
    run = tmp_path / "run"
    recipe = _recipe(stories_dir, run, 10, "log.checkpoint_every_n_steps=4")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(recipe, callbacks=[CrashAt(6)])
    with open(run / C.METRICS_FILE, "a") as f:
        f.write('{"step": 6, "time": 17.5, "train/lo')  # a kill in the middle of a write
    train(recipe)
    _assert_no_duplicate_steps(run, 10)


def test_a_corrupt_last_ckpt_is_moved_aside_and_the_newest_intact_checkpoint_resumes(
    stories_dir, tmp_path, capsys
):
    run = tmp_path / "run"
    ckpts = run / C.CHECKPOINT_DIR
    train(_recipe(stories_dir, run, 6, "log.checkpoint_every_n_steps=2"))
    for name in (C.LAST_CHECKPOINT, "step-000006.ckpt"):  # torn by a disk or a copy, say
        data = (ckpts / name).read_bytes()
        (ckpts / name).write_bytes(data[: len(data) // 2])
    train(_recipe(stories_dir, run, 8, "log.checkpoint_every_n_steps=2"))
    err = capsys.readouterr().err
    assert f"checkpoint {ckpts / C.LAST_CHECKPOINT} cannot be resumed from" in err
    assert (ckpts / "corrupt" / C.LAST_CHECKPOINT).is_file()  # set aside, never deleted
    assert (ckpts / "corrupt" / "step-000006.ckpt").is_file()
    saved = yaml.safe_load((run / C.RECIPE_FILE).read_text())
    assert saved[C.RUN_META_KEY]["resumed_from_step"] == 4
    assert json.loads((run / C.SUMMARY_FILE).read_text())["global_step"] == 8
    _assert_no_duplicate_steps(run, 8)


_HOLD = "import sys, time; from mosaics_lab.training.runlock import RunLock; "
_HOLD += "held = RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)"


def test_a_second_trainer_on_a_held_run_dir_is_refused_and_a_dead_holders_lock_is_taken_over(
    stories_dir, tmp_path, capsys
):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        args = ["train", str(GPT2_TINY), *tiny_overrides(stories_dir, run, steps=2), "eval.batches=0"]
        assert main(args) == EXIT_USER_ERROR
        err = capsys.readouterr().err
        assert "in use by another trainer" in err and f"pid {holder.pid}" in err
        assert not (run / C.RECIPE_FILE).exists()  # refused before writing anything
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding the lock: a stale lock
        holder.wait()
    assert main(args) == 0
    assert json.loads((run / C.SUMMARY_FILE).read_text())["status"] == "completed"
    assert not (run / HOLDER_FILE).exists()  # released at the end


def test_a_lock_held_from_another_host_is_refused_naming_it(stories_dir, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / HOLDER_FILE).write_text(json.dumps({"host": "node-17.cluster", "pid": 4242, "since": 0}))
    args = ["train", str(GPT2_TINY), *tiny_overrides(stories_dir, run, steps=2), "eval.batches=0"]
    assert main(args) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "another machine" in err and "node-17.cluster" in err and str(run / HOLDER_FILE) in err
