"""GPT-2 baseline (nanoGPT layout): learned absolute positions, LayerNorm, GELU 4x MLP, tied
embedding and LM head, causal SDPA. With a document mask, attention stays inside each document and
positions restart at every document start.

Shape letters: B batch, T sequence length, C channels (n_embd), H heads, D head size, V vocabulary.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from mosaics_lab.config.models import GPT2Config
from mosaics_lab.models.base import (
    LanguageModel,
    attention_mask,
    init_linear_,
    scaled_residual_init_,
)
from mosaics_lab.ops import Documents, as_documents


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, T, C); mask: (B, 1, T, T) bool (causal within documents) or None (causal)."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, H, T, D)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=mask is None,
            dropout_p=self.dropout if self.training else 0.0,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, H, T, D) -> (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.hidden, bias=config.bias)
        self.c_proj = nn.Linear(config.hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    """forward(x, docs): the signature of every family's block."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, docs: Optional[Documents] = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attention_mask(docs))
        return x + self.mlp(self.ln_2(x))


class GPT2(LanguageModel):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        assert config.vocab_size is not None, "vocab_size must be resolved before building"
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.apply(init_linear_)
        scaled_residual_init_(self, config.n_layer)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight

    @property
    def max_context(self) -> int:
        return self.config.block_size  # learned absolute positions stop here

    def forward(self, idx: torch.Tensor, doc_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """idx: (B, T) token ids; doc_ids: (B, T) document ids or None (one document per row)."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(
                f"gpt2 has learned positions for {self.config.block_size} tokens, got a sequence of {T}; "
                "raise model.block_size"
            )
        docs = None if doc_ids is None else as_documents(doc_ids, B, T)
        # Positions restart at each document: (B, T) from the layout, (T,) without one.
        pos = torch.arange(T, device=idx.device) if docs is None else docs.positions
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x, docs)
        return self.lm_head(self.ln_f(x))  # (B, T, V)
