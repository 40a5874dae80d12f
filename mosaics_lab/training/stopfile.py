"""Stopping a run cleanly from outside: a ``STOP`` file in its run dir, or its sweep launcher exiting.

A sweep launcher prunes a trial (or honours Ctrl-C) by writing ``<run dir>/STOP`` containing the
reason (``pruned``, ``interrupted``). At the next optimiser step the trainer stops as if its budget
were spent: the final ``last.ckpt`` and ``summary.json`` are written as usual, with the reason as the
summary's ``status``. A run started by a launcher (``MOSAICS_LAB_SWEEP_LAUNCHER=host:pid`` in its
environment) also stops when that launcher process is gone, so a killed launcher leaves no orphan
trials training on.

SIGINT (Ctrl-C) and SIGTERM (what SLURM sends before it kills a job, and ``kill``) end the run the same
way: at the next optimiser step the final ``last.ckpt`` and ``summary.json`` (status ``interrupted``)
are written, then ``train`` raises ``RunInterrupted`` and the command exits 130 / 143. Resuming from
that checkpoint is exact. A second Ctrl-C stops at once (KeyboardInterrupt, nothing saved).

Why not a Lightning part: ``EarlyStopping`` decides from logged metrics, and Lightning's own SIGTERM
handling raises ``SIGTERMException`` after any micro-batch (mid gradient accumulation too) and ends the
run as an error (the run would end "failed" and a pruned trial would look like a crash); on SIGINT it
saves nothing. Setting ``trainer.should_stop`` is Lightning's own way to end ``fit`` early; this callback
only decides when, at an optimiser-step boundary.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L

from mosaics_lab import constants as C

STOP_FILE = "STOP"
LAUNCHER_ENV = "MOSAICS_LAB_SWEEP_LAUNCHER"
LAUNCHER_GONE = "stopped: the sweep launcher exited"


INTERRUPTED = "interrupted"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(Exception):
    """The run stopped on SIGINT / SIGTERM after saving its checkpoint; ``exit_code`` is 128 + signal."""

    def __init__(self, signum: int, step: int, run_dir: Path) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        super().__init__(
            f"interrupted by {name} at step {step}; checkpoint and summary saved in {run_dir}. "
            "Run the same command again to resume."
        )


def launcher_id() -> str:
    """How a launcher names itself to the runs it starts (``host:pid``)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class StopFile(L.Callback):
    """Ends ``fit`` at the next optimiser step once ``<run_dir>/STOP`` exists (or the launcher died)."""

    def __init__(self, run_dir: str | Path, launcher_check_every_s: float = 5.0) -> None:
        self.path = Path(run_dir) / STOP_FILE
        self.reason: str | None = None
        self._last_step = -1
        self._launcher = self._parse_launcher(os.environ.get(LAUNCHER_ENV, ""))
        self._check_every = launcher_check_every_s
        self._next_launcher_check = 0.0
        self.signum: int | None = None  # SIGINT / SIGTERM received while training
        self._previous: dict[int, Any] = {}

    @staticmethod
    def _parse_launcher(value: str) -> int | None:
        host, _, pid = value.rpartition(":")
        # Only a launcher on this machine can be checked (a trial may run under srun elsewhere).
        return int(pid) if host == socket.gethostname() and pid.isdigit() else None

    # -- SIGINT / SIGTERM: remembered here, acted on at the next optimiser step --

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without waiting for the step
        self.signum = signum

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After Lightning registered its own SIGTERM handler (so ours replaces it during training);
        # Lightning's signal connector puts the handlers from before fit back at teardown.
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)

    def _restore_signals(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore_signals()

    def _local_reason(self) -> str | None:
        if self.signum is not None:
            return INTERRUPTED
        if self.path.exists():
            try:
                return self.path.read_text().strip() or "stopped"
            except OSError:
                return "stopped"
        now = time.monotonic()
        if self._launcher is not None and now >= self._next_launcher_check:
            self._next_launcher_check = now + self._check_every
            if not pid_alive(self._launcher):
                return LAUNCHER_GONE
        return None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step == self._last_step:
            return  # an accumulation micro-batch: decide once per optimiser step, on every rank alike
        self._last_step = trainer.global_step
        reason = self._local_reason()
        # Every rank takes part in the decision (a collective), so all ranks stop at the same step.
        if trainer.strategy.reduce_boolean_decision(reason is not None, all=False):
            self.reason = reason or "stopped"
            # Save here, at the step boundary, so the stopped run resumes exactly (RunLifecycle).
            for cb in trainer.callbacks:
                save = getattr(cb, "save_step_checkpoint", None)
                if save is not None:
                    save(trainer)
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs after RunLifecycle wrote summary.json: record why this run ended early.
        self._restore_signals()
        if self.reason is None or not trainer.is_global_zero:
            return
        summary_path = self.path.parent / C.SUMMARY_FILE
        if summary_path.exists():
            summary = json.loads(summary_path.read_text())
            summary["status"] = self.reason
            tmp = summary_path.with_name(f".{summary_path.name}.tmp{os.getpid()}")
            try:
                tmp.write_text(json.dumps(summary, indent=2) + "\n")
                os.replace(tmp, summary_path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        self.path.unlink(missing_ok=True)
