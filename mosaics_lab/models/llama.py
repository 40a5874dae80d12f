"""Llama-style baseline: RoPE, RMSNorm, SwiGLU, untied embedding and classifier, optional
grouped-query attention, causal SDPA. With a document mask, attention stays inside each document and
RoPE positions restart at every document start.

Shape letters: B batch, T sequence length, C channels (n_embd), H heads, K kv heads, D head size,
V vocabulary.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from mosaics_lab.config.models import LlamaConfig
from mosaics_lab.models.base import LanguageModel, attention_mask, init_linear_, scaled_residual_init_
from mosaics_lab.ops import Documents, as_documents


def rope_tables(
    T: int, D: int, theta: float, device: torch.device, positions: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (T, D/2), computed for the actual length: no maximum-length buffer.
    With positions (B, T) (restarting at each document), (B, 1, T, D/2), to broadcast over heads."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, D, 2, device=device, dtype=torch.float32) / D))
    if positions is None:
        angles = torch.outer(torch.arange(T, device=device, dtype=torch.float32), inv_freq)
    else:
        angles = (positions.to(torch.float32).unsqueeze(-1) * inv_freq).unsqueeze(1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of x (B, H, T, D) by the position's angle."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # (B, H, T, D/2) each
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return out.type_as(x)


class Attention(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv = config.n_head, config.kv_heads
        self.head_size = config.head_size
        self.theta = config.rope_theta
        self.wq = nn.Linear(config.n_embd, config.n_head * self.head_size, bias=False)
        self.wkv = nn.Linear(config.n_embd, 2 * self.n_kv * self.head_size, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, docs: Optional[Documents] = None) -> torch.Tensor:
        B, T, C = x.shape
        q = self.wq(x).view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, H, T, D)
        k, v = self.wkv(x).view(B, T, 2, self.n_kv, self.head_size).permute(2, 0, 3, 1, 4)  # (B, K, T, D)
        mask = attention_mask(docs)
        # Without a boundary, positions 0..T-1 as today; with one, they restart at each document.
        positions = None if mask is None else docs.positions
        cos, sin = rope_tables(T, self.head_size, self.theta, x.device, positions)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=mask is None,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv != self.n_head,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class SwiGLU(nn.Module):
    def __init__(self, n_embd: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.w1 = nn.Linear(n_embd, hidden, bias=False)
        self.w3 = nn.Linear(n_embd, hidden, bias=False)
        self.c_proj = nn.Linear(hidden, n_embd, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.silu(self.w1(x)) * self.w3(x)))


class Block(nn.Module):
    """forward(x, docs): the signature of every family's block."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(config.n_embd, eps=config.norm_eps)
        self.attn = Attention(config)
        self.ffn_norm = nn.RMSNorm(config.n_embd, eps=config.norm_eps)
        self.ffn = SwiGLU(config.n_embd, config.hidden, config.dropout)

    def forward(self, x: torch.Tensor, docs: Optional[Documents] = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), docs)
        return x + self.ffn(self.ffn_norm(x))


class Llama(LanguageModel):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        assert config.vocab_size is not None, "vocab_size must be resolved before building"
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = nn.RMSNorm(config.n_embd, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.apply(init_linear_)
        scaled_residual_init_(self, config.n_layer)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_embeddings.weight

    def forward(self, idx: torch.Tensor, doc_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """idx: (B, T) token ids; doc_ids: (B, T) document ids or None (one document per row)."""
        docs = None if doc_ids is None else as_documents(doc_ids, *idx.shape)
        x = self.drop(self.tok_embeddings(idx))  # (B, T, C)
        for block in self.blocks:
            x = block(x, docs)
        return self.lm_head(self.norm(x))  # (B, T, V)
