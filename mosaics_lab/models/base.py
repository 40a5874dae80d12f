"""What every model shares: the config fields common to all architectures and the trainer-facing
interface (blocks to wrap, optimiser groups, diagnostics). Models import torch and ops only.

Shape letters: B batch, T sequence length, C channels (n_embd), V vocabulary.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from mosaics_lab.config.models import ModelConfig, swiglu_hidden
from mosaics_lab.ops import Documents

__all__ = [
    "LanguageModel",
    "ModelConfig",
    "attention_mask",
    "gathered",
    "init_linear_",
    "scaled_residual_init_",
    "swiglu_hidden",
]


class LanguageModel(nn.Module):
    """Base class of every model in the table: ``forward(idx[B, T], doc_ids[B, T] | None) ->
    logits[B, T, V]``. With doc_ids, every position sees only its own document (MODELS.md 0);
    doc_ids=None is one document per row.

    The trainer never branches on the architecture; it asks the model for what it needs here.
    """

    blocks: nn.ModuleList

    def num_params(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Embedding))
        return n

    def optim_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: matrices and memory banks (dim >= 2) are decayed; biases, norms and per-head
        scalars (dim < 2) are not. Models with other needs override this."""
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 else no_decay).append(p)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    @property
    def max_context(self) -> int | None:
        """Longest sequence the model accepts; None = any length (no positional table)."""
        return None

    def diagnostics(self) -> dict[str, float]:
        """Scalars worth logging besides the loss (e.g. learned bandwidths). Empty by default."""
        return {}

    def begin_step(self, step: int, seed: int = 0) -> None:
        """Called by the trainer before every micro-batch of optimiser step `step` (the same step for
        all micro-batches of one step and on every rank): a model that draws per-step randomness
        (mosaic_v2's LTM delay) fixes it here. Nothing by default."""


def attention_mask(docs: Optional[Documents]) -> Optional[torch.Tensor]:
    """The baselines' causal attention restricted to each document: (B, 1, T, T) bool for SDPA's
    attn_mask, or None when there is no document boundary (then plain `is_causal`, bit for bit
    today's path). The diagonal is always visible, so no row is empty."""
    if docs is None or not docs.has_boundaries:
        return None
    T = docs.ids.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool, device=docs.ids.device).tril()
    return (causal & (docs.ids.unsqueeze(-1) == docs.ids.unsqueeze(-2))).unsqueeze(1)


def gathered(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every rank: under FSDP2 parameters (and what is computed from them) are
    sharded DTensors, and diagnostics need every head. A collective: every rank must call it."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def init_linear_(module: nn.Module, std: float = 0.02) -> None:
    """GPT-2 style init: N(0, std) for Linear and Embedding weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)


def scaled_residual_init_(model: nn.Module, n_layer: int, suffix: str = "c_proj.weight") -> None:
    """Residual projections get std 0.02 / sqrt(2 n_layer) (GPT-2 paper)."""
    for name, p in model.named_parameters():
        if name.endswith(suffix):
            nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))
