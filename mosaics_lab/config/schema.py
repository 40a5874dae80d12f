"""The typed recipe schema. A recipe YAML is merged onto these dataclasses in OmegaConf struct mode,
so a misspelled key or a wrong type is an error, never a silent default.

The ``model`` section's type depends on ``model.arch``: each model family owns its config dataclass
(see ``mosaics_lab.config.models.MODEL_CONFIGS``); the loader picks it before merging.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from mosaics_lab.config.models import ModelConfig

PRECISIONS = ("auto", "32-true", "bf16-mixed", "bf16-true", "16-mixed", "64-true")
STRATEGIES = ("auto", "ddp", "fsdp")


@dataclass
class DataConfig:
    # A prepared dataset directory (manifest.json + train/ + val/ litdata shards), local or s3://...
    path: str = "data/stories"
    # Synthetic generator that builds `path` on first use when it does not exist yet (null: `path`
    # must exist, e.g. made by `mosaics-lab prepare text ...`).
    generate: Optional[str] = "stories"
    # Arguments of the generator (e.g. num_tokens for stories; seq_len, num_kv_pairs for mqar).
    generate_args: dict[str, Any] = field(default_factory=dict)
    tokenizer: str = "byte"  # tokenizer used when generating text: byte | bpe
    seed: int = 0  # generation seed (the same seed gives identical shards)
    num_workers: int = 0  # DataLoader workers
    # Document mask: every memory (and a baseline's attention) sees only the positions of the same
    # document, documents being the runs of tokens ended by <|eot|> (the v2 paper trains with it).
    # Needs a dataset whose tokenizer has <|eot|>; off by default (the v1 paper trained without it).
    document_mask: bool = False

    def __post_init__(self) -> None:
        if self.tokenizer not in ("byte", "bpe"):
            raise ValueError(f"data.tokenizer must be 'byte' or 'bpe', got {self.tokenizer!r}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")


@dataclass
class TrainConfig:
    max_steps: Optional[int] = None  # optimiser steps; exactly one of max_steps / max_tokens
    max_tokens: Optional[int] = None  # converted to steps with global_batch_size * block_size
    global_batch_size: int = 32  # sequences per optimiser step, across all devices
    micro_batch_size: int = 8  # sequences per device per forward; accumulation is derived
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    precision: str = "auto"  # auto: bf16-mixed on GPU, 32-true on CPU

    def __post_init__(self) -> None:
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"train.max_steps must be >= 1, got {self.max_steps}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"train.max_tokens must be >= 1, got {self.max_tokens}")
        if self.micro_batch_size < 1 or self.global_batch_size < 1:
            raise ValueError("train.global_batch_size and train.micro_batch_size must be >= 1")
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(
                f"train.global_batch_size ({self.global_batch_size}) must be a multiple of "
                f"train.micro_batch_size ({self.micro_batch_size}); accumulation is derived from them"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"train.lr must be a finite number > 0, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"train.weight_decay must be a finite number >= 0, got {self.weight_decay}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"train.{name} must be in [0, 1), got {getattr(self, name)}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise ValueError(
                f"train.grad_clip must be a finite number >= 0 (0 disables), got {self.grad_clip}"
            )
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps < 0:
            raise ValueError(f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {PRECISIONS}, got {self.precision!r}")

    def total_steps(self, block_size: int) -> int:
        """Optimiser steps of the budget (max_tokens is rounded up to whole steps)."""
        if self.max_steps is not None:
            return self.max_steps
        return max(1, math.ceil(self.max_tokens / (self.global_batch_size * block_size)))

    def accumulation(self, world_size: int) -> int:
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ValueError(
                f"train.global_batch_size ({self.global_batch_size}) must be a multiple of "
                f"micro_batch_size x devices = {self.micro_batch_size} x {world_size}"
            )
        return self.global_batch_size // per_step


@dataclass
class EvalConfig:
    every_n_steps: int = 50  # validation interval in optimiser steps
    batches: int = 10  # validation batches per evaluation (0 disables validation)

    def __post_init__(self) -> None:
        if self.every_n_steps < 1:
            raise ValueError(f"eval.every_n_steps must be >= 1, got {self.every_n_steps}")
        if self.batches < 0:
            raise ValueError(f"eval.batches must be >= 0, got {self.batches}")


@dataclass
class DistConfig:
    accelerator: str = "auto"  # auto | cpu | gpu
    strategy: str = "auto"  # auto | ddp | fsdp (FSDP2 via Lightning's ModelParallelStrategy)
    devices: Any = "auto"  # int or "auto"
    num_nodes: int = 1
    compile: bool = False  # torch.compile each block
    activation_checkpointing: bool = False  # checkpoint each block

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"dist.strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.accelerator not in ("auto", "cpu", "gpu", "cuda"):
            raise ValueError(f"dist.accelerator must be auto, cpu or gpu, got {self.accelerator!r}")
        if not (self.devices == "auto" or (isinstance(self.devices, int) and self.devices >= 1)):
            raise ValueError(f"dist.devices must be a positive int or 'auto', got {self.devices!r}")
        if self.num_nodes < 1:
            raise ValueError(f"dist.num_nodes must be >= 1, got {self.num_nodes}")


RUN_NAME_MAX = 120


@dataclass
class LogConfig:
    root: str = "runs"  # runs live in <root>/<recipe name>/<run id>/
    run_id: Optional[str] = None  # None: a hash of the recipe, so the same command resumes the same run
    run_dir: Optional[str] = None  # explicit run directory (wins over root/name/run_id; used by sweeps)
    every_n_steps: int = 10  # scalar logging interval
    checkpoint_every_n_steps: int = 100
    progress_bar: bool = True
    # TensorBoard's name for the run (its events live in <run dir>/<run_name>/); None: load_recipe
    # names it after the recipe and the values of compare_keys, e.g. "mosaic_v2_tiny lr=0.0037 wd=0.19"
    run_name: Optional[str] = None
    # The recipe keys that distinguish this run, shown first in TensorBoard's HPARAMS tab (with
    # model.arch); None: load_recipe takes those the command line changed; a sweep sets its swept keys
    compare_keys: Optional[list[str]] = None

    def __post_init__(self) -> None:
        if self.run_name is not None and (not self.run_name.strip() or len(self.run_name) > RUN_NAME_MAX):
            raise ValueError(f"log.run_name must be 1 to {RUN_NAME_MAX} characters, got {self.run_name!r}")
        if self.every_n_steps < 1 or self.checkpoint_every_n_steps < 1:
            raise ValueError("log.every_n_steps and log.checkpoint_every_n_steps must be >= 1")
        if self.run_id is not None:
            check_path_component("log.run_id", self.run_id)

    @property
    def tensorboard_subdir(self) -> str:
        """The folder of the run dir that holds its TensorBoard events: the run name as one path
        component (TensorBoard shows a run by its folder). "" (the run dir itself) without a name."""
        if self.run_name is None:
            return ""
        name = "".join("_" if c in "/\\\0" else c for c in self.run_name.strip())
        return "_" + name if name in (".", "..") else name


def check_path_component(key: str, value: str) -> None:
    """A recipe value that names one folder under ``log.root``: no separator, no ``..``, not absolute,
    so a run dir never lands outside ``<root>/<name>/``."""
    if not value or value in (".", "..") or any(c in value for c in "/\\\0"):
        raise ValueError(
            f"{key} must be a plain folder name (no '/', '\\', '..' or absolute path), got {value!r}; "
            "use log.run_dir to put a run in an explicit directory"
        )


@dataclass
class Recipe:
    name: str = "unnamed"
    seed: int = 1337
    # Another recipe whose model this recipe's model matches in parameter count (< 2 %), by adjusting
    # its width-free knob (`ModelConfig.match_knob()`: d_ff, or pmem_size for persistent memories).
    # A relation between two recipes, so it lives here, not in the model; relative to the file.
    match_params_of: Optional[str] = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        check_path_component("name", self.name)
        if (self.train.max_steps is None) == (self.train.max_tokens is None):
            raise ValueError("set exactly one of train.max_steps and train.max_tokens")
