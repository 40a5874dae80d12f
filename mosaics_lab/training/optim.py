"""Optimiser and schedule: AdamW over the model's own decay / no-decay groups, linear warm-up then
cosine decay to ``lr * min_lr_ratio``."""

from __future__ import annotations

import math

import torch

from mosaics_lab.config.schema import TrainConfig
from mosaics_lab.models.base import LanguageModel


def lr_lambda(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr at optimiser step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(
    model: LanguageModel, cfg: TrainConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    groups = [g for g in model.optim_groups(cfg.weight_decay) if g["params"]]
    fused = all(p.is_cuda for g in groups for p in g["params"])  # fused AdamW is CUDA-only
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused or None)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_lambda(s, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
    )
    return opt, sched
