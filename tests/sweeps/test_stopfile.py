"""The trainer's StopFile callback: a STOP file (or a dead launcher) ends fit cleanly at the next step."""

from __future__ import annotations

import json
import subprocess
import sys

import lightning as L
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel

from mosaics_lab.training.stopfile import LAUNCHER_ENV, STOP_FILE, StopFile


class WriteStopAt(L.Callback):
    """Plays the launcher: asks the run to stop once it reaches ``step``."""

    def __init__(self, run_dir, step: int, reason: str = "pruned") -> None:
        self.run_dir, self.step, self.reason = run_dir, step, reason

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            (self.run_dir / STOP_FILE).write_text(self.reason + "\n")


class WriteSummary(L.Callback):
    """Plays RunLifecycle: writes summary.json (status completed) at train end, before StopFile."""

    def __init__(self, run_dir) -> None:
        self.run_dir = run_dir

    def on_train_end(self, trainer, pl_module) -> None:
        summary = {"status": "completed", "global_step": trainer.global_step}
        (self.run_dir / "summary.json").write_text(json.dumps(summary))


def fit(tmp_path, callbacks, max_steps=50) -> L.Trainer:
    trainer = L.Trainer(
        max_steps=max_steps,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        limit_val_batches=0,
    )
    trainer.fit(BoringModel())
    return trainer


def test_stop_file_ends_the_run_at_the_next_step_with_its_reason_as_status(tmp_path):
    trainer = fit(tmp_path, [WriteSummary(tmp_path), WriteStopAt(tmp_path, 5), StopFile(tmp_path)])
    assert trainer.global_step == 5  # it stops at the step that saw the request, far from max_steps
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "pruned"
    assert not (tmp_path / STOP_FILE).exists(), "honoured requests are removed, so a resume is not stopped"


def test_without_a_stop_file_the_run_completes(tmp_path):
    trainer = fit(tmp_path, [WriteSummary(tmp_path), StopFile(tmp_path)], max_steps=8)
    assert trainer.global_step == 8
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"


def test_a_dead_launcher_stops_the_run(tmp_path, monkeypatch):
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer exists
    monkeypatch.setenv(LAUNCHER_ENV, f"{socket.gethostname()}:{dead.pid}")
    trainer = fit(tmp_path, [WriteSummary(tmp_path), StopFile(tmp_path)])
    assert trainer.global_step == 1
    status = json.loads((tmp_path / "summary.json").read_text())["status"]
    assert status.startswith("stopped: the sweep launcher")


@pytest.mark.parametrize("value", ["", "otherhost:1", "garbage"])
def test_launcher_check_ignores_other_hosts_and_junk(tmp_path, monkeypatch, value):
    monkeypatch.setenv(LAUNCHER_ENV, value)
    assert fit(tmp_path, [StopFile(tmp_path)], max_steps=3).global_step == 3
