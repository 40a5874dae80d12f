"""What the gpu-check parts share: the budget of each mode, the run context, the failure type.

Shape letters: B batch, H heads, T time steps, D head dimension, C width, L layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mosaics_lab.bench.train import Shape


class CheckFailed(RuntimeError):
    """A correctness check failed: the gpu-check stops there (unless --keep-going) and exits non-zero."""


@dataclass(frozen=True)
class Budget:
    """Every size and count of one mode, in one place, so that the GPU run can be re-sized here."""

    op_shape: tuple[int, int, int, int]  # (B, H, T, D); T off every block size
    op_window: int  # the STM-like window 1..window
    op_delay: int  # the LTM-like delay
    block_shape: tuple[int, int, int]  # (C, H, T) of the compiled single blocks
    block_stm_window: int
    block_delays: tuple[tuple[int, ...], tuple[int, ...]]  # (warm-up delays, delays without recompiling)
    train_shape: Shape  # the four architectures through the trainer
    train_steps: int
    train_lr: float
    throughput_shapes: tuple[Shape, ...]
    throughput_rounds: int
    throughput_steps: int  # steps per round
    fsdp_shape: Shape
    fsdp_steps: int  # steps before the checkpoint; the resumed run adds 2
    stm_width: tuple[int, int, int]  # (C, L, H)
    stm_lengths: tuple[int, ...]
    stm_repeats: int
    sync_shape: Shape
    data_tokens: int


# One H100 / H200 in under 8 minutes, compilation included (estimates: the part times of the first GPU
# run are the real budget; re-size here). GPT-2 small = d 768, 12 layers, 12 heads, T 1024.
GPU = Budget(
    op_shape=(2, 4, 777, 64),
    op_window=255,
    op_delay=64,
    block_shape=(256, 4, 1024),
    block_stm_window=256,
    block_delays=((64, 100), (130, 200, 256)),
    train_shape=Shape(768, 12, 12, 1024, 8),
    train_steps=30,
    train_lr=1e-3,
    throughput_shapes=(Shape(768, 12, 12, 1024, 8), Shape(768, 12, 12, 4096, 2)),
    throughput_rounds=3,
    throughput_steps=2,
    fsdp_shape=Shape(768, 12, 12, 1024, 4),
    fsdp_steps=5,
    stm_width=(768, 4, 12),
    stm_lengths=(4096, 16384, 65536),
    stm_repeats=2,
    sync_shape=Shape(768, 2, 12, 1024, 4),
    data_tokens=400_000,
)

# --quick (CPU, the fast test suite): the same parts at toy sizes, about a minute on 2 cores.
QUICK = Budget(
    op_shape=(2, 2, 200, 16),
    op_window=31,
    op_delay=16,
    block_shape=(32, 2, 96),
    block_stm_window=16,
    block_delays=((4, 9), (13, 24, 5)),
    train_shape=Shape(32, 2, 2, 32, 4),
    train_steps=8,
    train_lr=3e-3,
    throughput_shapes=(Shape(32, 2, 2, 128, 1),),
    throughput_rounds=1,
    throughput_steps=1,
    fsdp_shape=Shape(32, 2, 2, 32, 2),
    fsdp_steps=3,
    stm_width=(32, 2, 2),
    stm_lengths=(256, 512, 1024),
    stm_repeats=1,
    sync_shape=Shape(32, 2, 2, 64, 2),
    data_tokens=60_000,
)


@dataclass
class Context:
    device: torch.device
    budget: Budget
    work: Path  # scratch directory: prepared data and run directories
    compile: bool  # torch.compile (Inductor) where the part compiles
    log: Callable[[str], None]
    rows: list[dict] = field(default_factory=list)  # the current part's rows
    findings: dict = field(default_factory=dict)  # passed between parts (e.g. trainer syncs)

    @property
    def compile_backend(self) -> str:
        return "inductor" if self.compile else "eager"

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"
