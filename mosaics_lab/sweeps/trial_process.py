"""A trial as a process: the ``train`` command line it gets, its environment, its run dir (a leftover
set aside), asking it to stop (the ``STOP`` file its run watches) and signalling its process group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mosaics_lab.sweeps.spec import Sweep, format_override
from mosaics_lab.training.stopfile import LAUNCHER_ENV, STOP_FILE, launcher_id

TERM_GRACE_S = 15.0  # a trial sent SIGTERM is killed this long after


def default_train_command() -> list[str]:
    return [sys.executable, "-m", "mosaics_lab.cli", "train"]


def trial_command(
    train_command: Sequence[str], sweep: Sweep, recipe: Path, run_dir: Path, values: dict[str, Any]
) -> list[str]:
    """``train_command RECIPE key=value ...``: the sweep's overrides, the trial's values, its run dir."""
    overrides = sweep.trial_overrides(values)
    if not any(o.startswith("log.progress_bar=") for o in overrides):
        overrides.append("log.progress_bar=false")  # its output goes to a file
    if not any(o.startswith("log.compare_keys=") for o in overrides):
        # TensorBoard's HPARAMS tab lists the swept keys first; the run name shows their values
        overrides.append(format_override("log.compare_keys", list(values)))
    return [*train_command, str(recipe), *overrides, f"log.run_dir={run_dir}"]


def trial_env(jobs: int) -> dict[str, str]:
    env = dict(os.environ)
    env[LAUNCHER_ENV] = launcher_id()  # the run stops by itself if its launcher is gone
    env.setdefault("PYTHONUNBUFFERED", "1")
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        # K trials share the CPU: without this each would start one thread per core.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    return env


def set_aside(run_dir: Path) -> Path | None:
    """A trial number is new, so an existing non-empty dir is a leftover (e.g. of a deleted study):
    move it aside rather than mix runs or resume from its checkpoint."""
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return None
    k = 1
    while (aside := run_dir.with_name(f"{run_dir.name}.old{k}")).exists():
        k += 1
    run_dir.rename(aside)
    return aside


def request_stop(run_dir: Path, reason: str) -> None:
    """Ask the run to stop at its next step (``training.stopfile``); ``reason`` becomes its status."""
    tmp = run_dir / f".{STOP_FILE}.tmp"
    tmp.write_text(reason + "\n")
    os.replace(tmp, run_dir / STOP_FILE)


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)  # the run's whole group: Lightning's DDP workers included


def terminate(proc: subprocess.Popen) -> None:
    signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(TERM_GRACE_S)
    except subprocess.TimeoutExpired:
        signal_group(proc, signal.SIGKILL)
        proc.wait()
