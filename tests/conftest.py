"""Shared fixtures: a small prepared stories dataset (made once per test session) and tiny overrides."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def stories_dir(tmp_path_factory) -> Path:
    """30k tokens of synthetic stories as litdata shards."""
    from mosaics_lab.data import prepare_synthetic

    out = tmp_path_factory.mktemp("data") / "stories"
    prepare_synthetic("stories", out, seed=0, num_tokens=30_000)
    return out


def tiny_overrides(data_dir: Path, run_dir: Path, steps: int = 2) -> list[str]:
    """Overrides that make any *_tiny recipe take seconds on a CPU."""
    return [
        f"data.path={data_dir}",
        "data.generate=null",
        f"log.run_dir={run_dir}",
        f"train.max_steps={steps}",
        "train.global_batch_size=4",
        "train.micro_batch_size=2",
        "train.warmup_steps=2",
        "model.block_size=32",
        "eval.every_n_steps=2",
        "eval.batches=1",
        "log.every_n_steps=1",
        "log.progress_bar=false",
    ]


def task_overrides(data_dir: Path, run_dir: Path, steps: int = 2) -> list[str]:
    """Overrides that make any recipes/icl recipe take seconds: little data, two small steps."""
    return [
        f"data.path={data_dir}",
        "data.generate_args.num_train=32",
        "data.generate_args.num_val=8",
        f"log.run_dir={run_dir}",
        f"train.max_steps={steps}",
        "train.global_batch_size=4",
        "train.micro_batch_size=4",
        "train.warmup_steps=1",
        f"eval.every_n_steps={steps}",
        "eval.batches=1",
        "log.every_n_steps=1",
        "log.progress_bar=false",
    ]
