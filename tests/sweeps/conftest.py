"""Helpers for sweep tests: sweep files in a temp dir, the fake trainer, launchers in or out of process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BASE_RECIPE = REPO / "recipes" / "gpt2_tiny.yaml"
FAKE_TRAIN = f"{sys.executable} {Path(__file__).with_name('fake_train.py')}"


def write_sweep(directory: Path, name: str = "s", **fields: Any) -> Path:
    """A sweep file over gpt2_tiny (absolute base path, so it can live anywhere)."""
    spec = {"study": name, "base_recipe": str(BASE_RECIPE), **fields}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def sweep_args(path: Path, out: Path, *extra: str, fake: bool = True) -> list[str]:
    args = ["sweep", str(path), "--out", str(out), *extra]
    return [*args, "--train-command", FAKE_TRAIN] if fake else args


def run_sweep(path: Path, out: Path, *extra: str, fake: bool = True) -> int:
    """The CLI in this process (fast: no interpreter start)."""
    from mosaics_lab.cli import main

    return main(sweep_args(path, out, *extra, fake=fake))


def start_sweep(path: Path, out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A launcher in its own process (to kill or interrupt it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "mosaics_lab.cli", *sweep_args(path, out, *extra)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )


def load_trials(out: Path, name: str = "s", storage: str | None = None) -> list[optuna.trial.FrozenTrial]:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from mosaics_lab.sweeps.storage import with_installed_driver

    store = (
        with_installed_driver(storage)
        if storage
        else JournalStorage(JournalFileBackend(str(out / name / "journal.log")))
    )
    return optuna.load_study(study_name=name, storage=store).get_trials()


def read_ledger(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for(condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def ledger(tmp_path, monkeypatch) -> Path:
    """The fake trainer's record of every execution (start/end lines), via FAKE_LEDGER."""
    path = tmp_path / "ledger.jsonl"
    monkeypatch.setenv("FAKE_LEDGER", str(path))
    return path


@pytest.fixture(scope="session")
def sweep_stories(tmp_path_factory) -> Path:
    """A small prepared stories dataset, shared read-only by every real trial of the session."""
    from mosaics_lab.data import prepare_synthetic

    out = tmp_path_factory.mktemp("sweep_data") / "stories"
    prepare_synthetic("stories", out, seed=0, num_tokens=20_000)
    return out


def tiny_trial_overrides(data_dir: Path, steps: int = 4) -> dict[str, Any]:
    """Recipe overrides that make a real trial of any *_tiny recipe take seconds on a CPU."""
    return {
        "data.path": str(data_dir),
        "data.generate": None,
        "train.max_steps": steps,
        "train.warmup_steps": 0,
        "train.global_batch_size": 4,
        "train.micro_batch_size": 4,
        "model.n_layer": 1,
        "model.n_embd": 32,
        "model.block_size": 32,
        "eval.every_n_steps": 2,
        "eval.batches": 1,
        "log.every_n_steps": 1,
        "log.checkpoint_every_n_steps": 1000,
    }


def tiny_cli_overrides(data_dir: Path, steps: int = 4) -> list[str]:
    from mosaics_lab.sweeps.spec import format_override

    return [format_override(k, v) for k, v in tiny_trial_overrides(data_dir, steps).items()]
