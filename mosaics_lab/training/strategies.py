"""Lightning strategies from the recipe's ``dist`` section: auto, DDP, or FSDP2 through
``ModelParallelStrategy`` (the module's ``configure_model`` applies ``fully_shard`` per block)."""

from __future__ import annotations

import torch
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, Strategy

from mosaics_lab.config.schema import DistConfig


def world_size(dist: DistConfig) -> int:
    if dist.devices == "auto":
        n = torch.cuda.device_count() if dist.accelerator != "cpu" and torch.cuda.is_available() else 1
    else:
        n = int(dist.devices)
    return n * dist.num_nodes


def build_strategy(dist: DistConfig) -> str | Strategy:
    on_gpu = dist.accelerator in ("gpu", "cuda") or (dist.accelerator == "auto" and torch.cuda.is_available())
    if dist.strategy == "ddp":
        return DDPStrategy(process_group_backend=None if on_gpu else "gloo")
    if dist.strategy == "fsdp":
        return ModelParallelStrategy(data_parallel_size="auto", tensor_parallel_size=1)
    return "auto"
