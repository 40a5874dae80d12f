"""SIGINT / SIGTERM save the run and exit 130 / 143; a full disk is one line naming the path, with no
temp files left behind; SIGKILL at any moment costs at most the steps since the last checkpoint."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import lightning as L
import pytest
import torch

from mosaics_lab import constants as C
from mosaics_lab.cli import main
from mosaics_lab.config import load_recipe
from mosaics_lab.training.run import train
from tests.conftest import REPO, tiny_overrides
from tests.training.test_train import losses_by_step, read_metrics

GPT2_TINY = REPO / "recipes" / "gpt2_tiny.yaml"
EXIT_OS_ERROR = 4


class SignalAt(L.Callback):
    """Sends this process ``signum`` after optimiser step ``step`` (as Ctrl-C or SLURM would)."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum, self.sent = step, signum, False

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


def _overrides(stories_dir, run_dir, steps, *extra):
    # dropout: an exact resume must also restore the RNG states
    return [*tiny_overrides(stories_dir, run_dir, steps=steps), "eval.batches=0", "model.dropout=0.1", *extra]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_the_current_step_and_the_resume_is_exact(signum, stories_dir, tmp_path):
    straight = losses_by_step(train(load_recipe(GPT2_TINY, _overrides(stories_dir, tmp_path / "s", 10))))
    run = tmp_path / "cut"
    recipe = load_recipe(GPT2_TINY, _overrides(stories_dir, run, 10))  # no periodic checkpoint before 100
    from mosaics_lab.training.stopfile import RunInterrupted

    with pytest.raises(RunInterrupted) as info:
        train(recipe, callbacks=[SignalAt(4, signum)])
    assert info.value.exit_code == 128 + signum
    summary = json.loads((run / C.SUMMARY_FILE).read_text())
    assert summary["status"] == "interrupted"
    saved = torch.load(run / C.CHECKPOINT_DIR / C.LAST_CHECKPOINT, weights_only=True)
    assert saved["global_step"] == summary["global_step"] == 5  # stopped at the next step, nothing lost
    assert signal.getsignal(signum) is not None and signal.getsignal(signum) != signal.SIG_IGN
    resumed = losses_by_step(train(recipe))
    assert [r["step"] for r in read_metrics(run) if C.TRAIN_LOSS in r] == list(range(10))
    assert resumed == pytest.approx(straight, rel=1e-6, abs=1e-6)


def test_sigterm_to_the_train_command_exits_143_with_an_interrupted_summary(stories_dir, tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "mosaics_lab.cli", "train", str(GPT2_TINY)]
    args += _overrides(stories_dir, run, 500)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(losses_by_step(run) if (run / C.METRICS_FILE).exists() else {}) < 3:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "interrupted by SIGTERM" in err and "Traceback" not in err
    summary = json.loads((run / C.SUMMARY_FILE).read_text())
    assert summary["status"] == "interrupted" and 3 <= summary["global_step"] < 500
    saved = torch.load(run / C.CHECKPOINT_DIR / C.LAST_CHECKPOINT, weights_only=True)
    assert saved["global_step"] == summary["global_step"]


def _no_temp_files(run_dir) -> list[str]:
    return [str(p) for p in run_dir.rglob("*") if ".tmp" in p.name]


def test_a_failed_checkpoint_write_is_one_line_naming_the_path_and_leaves_no_temp_file(
    stories_dir, tmp_path, capsys, monkeypatch
):
    run = tmp_path / "run"
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        if hasattr(f, "write"):
            f.write(b"\0" * 4096)  # part of the file made it to disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), getattr(f, "name", None))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full)
    args = ["train", str(GPT2_TINY), *_overrides(stories_dir, run, 4, "log.checkpoint_every_n_steps=2")]
    assert main(args) == EXIT_OS_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and str(run / C.CHECKPOINT_DIR) in err[0]
    assert _no_temp_files(run) == []


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {done.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_enospc_on_a_small_tmpfs_is_one_line_and_leaves_no_temp_file(stories_dir, tiny_tmpfs, capsys):
    run = tiny_tmpfs / "run"  # a 10 MB checkpoint does not fit in 4 MB
    args = ["train", str(GPT2_TINY), *_overrides(stories_dir, run, 4, "log.checkpoint_every_n_steps=2")]
    assert main(args) == EXIT_OS_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(run) in err[0], err
    assert _no_temp_files(run) == []


@pytest.mark.slow
def test_sigkill_at_five_random_moments_costs_nothing_but_time(stories_dir, tmp_path):
    """Property: whatever the moment of each kill (checkpoint writes included), the final run logs
    every step once, with the losses of an uninterrupted run."""
    steps = 30
    straight = losses_by_step(
        train(
            load_recipe(
                GPT2_TINY, _overrides(stories_dir, tmp_path / "s", steps, "log.checkpoint_every_n_steps=3")
            )
        )
    )
    run = tmp_path / "run"
    args = [sys.executable, "-m", "mosaics_lab.cli", "train", str(GPT2_TINY)]
    args += _overrides(stories_dir, run, steps, "log.checkpoint_every_n_steps=3")
    rng = random.Random(20261202)
    for _ in range(5):
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        start = len(losses_by_step(run)) if (run / C.METRICS_FILE).exists() else 0
        while time.time() < deadline and proc.poll() is None:
            now = len(losses_by_step(run)) if (run / C.METRICS_FILE).exists() else 0
            if now > start:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    logged = [r["step"] for r in read_metrics(run) if C.TRAIN_LOSS in r]
    assert logged == list(range(steps))
    assert losses_by_step(run) == pytest.approx(straight, rel=1e-6, abs=1e-6)
