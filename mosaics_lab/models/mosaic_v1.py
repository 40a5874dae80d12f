"""Memory Mosaics v1 (Zhang, Nolte, Sadhukhan, Chen, Bottou, ICLR 2025): GPT-2's layout with
self-attention replaced by a contextual memory and the MLP by a persistent memory.

Every memory is kernel regression over (key, value) pairs with unit-norm keys and an explicit,
learned sharpness; the query at position t is the key of position t itself (no W_q) and there is
no positional encoding anywhere. Keys summarise the past (a leaky average), values peek one token
into the future, so a query sees only the pairs strictly before it. See MODELS.md section 1.

Equal to the authors' nanoMosaics `mosaic_model.py` by default (tested against an independent
statement of their equations in float64): the persistent memory's bandwidth is exp(min(2 * 10 phi',
c_max)), dropout acts on the memories' attention weights, norms are guarded by eps 1e-10, and
`bias: true` puts biases on every projection and LayerNorm. With a document mask (`doc_ids`), the
leaky averages restart at each document, the contextual memory reads only pairs of the query's own
document and a value never peeks across a document's end; the persistent memory is unchanged.

Shape letters: B batch, T sequence length, C channels (n_embd), H heads, D head size (C / H),
P persistent banks, S pairs per bank, V vocabulary.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from mosaics_lab.config.models import MosaicV1Config
from mosaics_lab.constants import memory_tag
from mosaics_lab.models.base import (
    LanguageModel,
    gathered,
    init_linear_,
    scaled_residual_init_,
    swiglu_hidden,
)
from mosaics_lab.ops import (
    Documents,
    as_documents,
    kernel_regression,
    kernel_regression_weights,
    leaky_average,
    unit_rows,
)
from mosaics_lab.ops.kernel_regression import at_least_float32


def _per_head(p: torch.Tensor) -> torch.Tensor:
    """(H,) per-head scalar -> (1, H, 1, 1), to broadcast over (B, H, T, D). Scalars are stored 1-D so
    that optim_groups leaves them out of weight decay."""
    return p.view(1, -1, 1, 1)


class KeyExtractor(nn.Module):
    """k_t = s_h * normalise(leaky average of W_k x over the past, one constant decay per head).

    `scale_power` 2 gives the persistent memory's query, exp(min(2 * 10 phi, c_max)): the clamp
    bounds the squared scale, as in the authors' code (not exp(min(10 phi, c_max))^2)."""

    def __init__(self, config: MosaicV1Config, scale_power: int = 1) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.key_scale_max = config.key_scale_max
        self.scale_power = scale_power
        self.eps = config.norm_eps
        self.c_k = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        # log_decay = -10 |theta|: head 0 (theta 0.05, decay e^-0.5) remembers long, the last head
        # (theta 0.5, decay e^-5) almost only the current token.
        self.theta = nn.Parameter(torch.linspace(0.5, 5.0, config.n_head) / 10)
        self.phi = nn.Parameter(torch.full((config.n_head,), 0.1))

    def log_decay(self) -> torch.Tensor:
        return -10 * self.theta.abs()  # (H,)

    def scale(self) -> torch.Tensor:
        """exp(min(scale_power * 10 phi_h, c_max)), (H,). Contextual memory (power 1): s_h, carried by
        the query and the keys alike, so the bandwidth is s_h^2. Persistent memory (power 2): the
        whole bandwidth, carried by the query alone."""
        return torch.exp(torch.clamp(self.scale_power * 10 * self.phi, max=self.key_scale_max))

    def forward(self, x: torch.Tensor, docs: Optional[Documents] = None) -> torch.Tensor:
        B, T, C = x.shape
        k = self.c_k(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, T, C) -> (B, H, T, D)
        # Unit norm, (B, H, T, D). With a gate of 1 and a constant decay the largest log weight of
        # every row is 0, so eps acts on the plain ||kbar|| exactly as in the authors' code.
        k = leaky_average(k, self.log_decay().view(1, -1, 1), doc_ids=docs, eps=self.eps)
        return _per_head(self.scale()) * k


class ValueExtractor(nn.Module):
    """Peeking values: v_t = a_h * normalise(gamma_h W_v x_t + (1 - gamma_h) W_v x_{t+1}), which sees one
    token into the future, hence min_lag 1 in the contextual memory."""

    def __init__(self, config: MosaicV1Config) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.eps = config.norm_eps
        self.c_v = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.gamma = nn.Parameter(torch.rand(config.n_head))  # U(0, 1), left unconstrained in training
        self.psi = nn.Parameter(torch.full((config.n_head,), -0.05))  # a_h = exp(10 psi) ~ 0.61 at init

    def forward(self, x: torch.Tensor, docs: Optional[Documents] = None) -> torch.Tensor:
        B, T, C = x.shape
        v = self.c_v(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, T, C) -> (B, H, T, D)
        # vtilde_{t+1}, with vtilde_{T+1} = 0: shift time left by one and pad the end.
        v_next = F.pad(v[:, :, 1:], (0, 0, 0, 1))  # (B, H, T, D)
        if docs is not None:
            # A document's last value does not peek into the next document: vtilde_{end+1} = 0.
            v_next = v_next.masked_fill(docs.ends[:, None, :, None], 0.0)
        gamma = _per_head(self.gamma)
        v = gamma * v + (1 - gamma) * v_next
        return unit_rows(v, self.eps, _per_head(torch.exp(10 * self.psi)))  # a_h v / (||v|| + eps)


class ContextualMemory(nn.Module):
    """Replaces self-attention: kernel regression of each position's key against the (key, value)
    pairs of the positions strictly before it (min_lag 1: value t peeks at token t + 1, so a query
    at t may use it only from t + 1 on). The first position sees nothing and outputs exactly 0."""

    def __init__(self, config: MosaicV1Config) -> None:
        super().__init__()
        self.key = KeyExtractor(config)
        self.value = ValueExtractor(config)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        on_weights = config.memory_dropout == "weights"
        self.weight_dropout = config.ic_p if on_weights else 0.0
        self.retrieval_dropout = nn.Dropout(0.0 if on_weights else config.ic_p)
        self.resid_dropout = nn.Dropout(config.hd_p)

    def forward(self, x: torch.Tensor, docs: Optional[Documents] = None) -> torch.Tensor:
        B, T, C = x.shape
        k = self.key(x, docs)  # (B, H, T, D), norm s_h
        # Symmetric kernel: the query is the key, so q . k_i = s_h^2 cos(k_t, k_i), bandwidth s_h^2.
        y = kernel_regression(
            k,
            k,
            self.value(x, docs),
            min_lag=1,
            doc_ids=docs,
            dropout_p=self.weight_dropout if self.training else 0.0,
        )  # (B, H, T, D)
        y = self.retrieval_dropout(y)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, H, T, D) -> (B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def bandwidths(self) -> torch.Tensor:
        return self.key.scale() ** 2  # (H,)

    def retrieval_weights(self, x: torch.Tensor, docs: Optional[Documents] = None) -> torch.Tensor:
        """What `forward` reads: softmax weights of each query over the pairs it sees, (B, H, T, T)
        [query t, pair i], recomputed from q = k on the plain path, without dropout (models.retrievals)."""
        k = self.key(x, docs)  # (B, H, T, D)
        return kernel_regression_weights(k, k, min_lag=1, doc_ids=docs)


class PersistentMemory(nn.Module):
    """Replaces the MLP: kernel regression against P banks of S learned (key, value) pairs per head,
    the same at every position (no mask, no position)."""

    def __init__(self, config: MosaicV1Config) -> None:
        super().__init__()
        H, D, P, S = config.n_head, config.head_size, config.pmem_count, config.pairs
        self.key = KeyExtractor(config, scale_power=2)
        # Banks are 4-D, so optim_groups decays them like weight matrices.
        self.bank_k = nn.Parameter(torch.randn(H, P, S, D) / math.sqrt(D))
        self.bank_v = nn.Parameter(torch.randn(H, P, S, D) / math.sqrt(D))
        self.psi = nn.Parameter(torch.full((H,), -0.05))  # output scale exp(10 psi), as the values'
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.weight_dropout = config.ic_p if config.memory_dropout == "weights" else 0.0
        self.resid_dropout = nn.Dropout(config.hd_p)

    def forward(self, x: torch.Tensor, docs: Optional[Documents] = None) -> torch.Tensor:
        B, T, C = x.shape
        H, P, S, D = self.bank_k.shape
        # The stored keys carry no scale of their own, so the query carries the whole bandwidth
        # exp(min(2 * 10 phi', c_max)). Its leaky average restarts at document starts like any key's.
        q = self.key(x, docs)  # (B, H, T, D)
        # Every position queries the same pairs with no mask, so batch and time are one axis of
        # B T queries (one large product instead of B small ones), and each bank is a separate
        # softmax, i.e. a head of its own.
        q = q.transpose(0, 1).reshape(H, 1, B * T, D)  # (B, H, T, D) -> (H, 1, BT, D)
        q = q.expand(H, P, B * T, D).reshape(1, H * P, B * T, D)  # -> (1, HP, BT, D)
        bank_k = self.bank_k.view(1, H * P, S, D)  # (H, P, S, D) -> (1, HP, S, D)
        bank_v = self.bank_v.view(1, H * P, S, D)
        # float32 logits whatever the autocast dtype: q . K reaches s'^2 |K| (up to ~1e9).
        with torch.autocast(x.device.type, enabled=False):
            z = F.scaled_dot_product_attention(
                at_least_float32(q),
                at_least_float32(bank_k),
                at_least_float32(bank_v),
                scale=1.0,
                dropout_p=self.weight_dropout if self.training else 0.0,
            )
        z = z.to(x.dtype).view(H, P, B, T, D).mean(1)  # (1, HP, BT, D) -> (H, B, T, D), mean over banks
        z = torch.exp(10 * self.psi).view(H, 1, 1, 1) * z
        z = z.permute(1, 2, 0, 3).reshape(B, T, C)  # (H, B, T, D) -> (B, T, H, D) -> (B, T, C)
        return self.resid_dropout(self.c_proj(z))

    def bandwidths(self) -> torch.Tensor:
        return self.key.scale()  # (H,): the query carries the whole bandwidth

    @torch.no_grad()
    def retrieval_weights(self, x: torch.Tensor, docs: Optional[Documents] = None) -> torch.Tensor:
        """Weights of each query over the P S learned pairs, (B, H, T, P S) float32, without dropout:
        each bank's softmax over 1 / P (forward averages the banks), so a row sums to 1."""
        H, P, S, D = self.bank_k.shape
        q = at_least_float32(self.key(x, docs))  # (B, H, T, D)
        logits = torch.einsum("bhtd,hpsd->bhtps", q, at_least_float32(self.bank_k))  # (B, H, T, P, S)
        return (torch.softmax(logits, dim=-1) / P).flatten(-2).float()


class MLP(nn.Module):
    """persistent: mlp, GPT-2's GELU MLP (the authors report it works about as well as pmem)."""

    def __init__(self, config: MosaicV1Config) -> None:
        super().__init__()
        hidden = config.d_ff if config.d_ff is not None else 4 * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.hd_p)

    def forward(self, x: torch.Tensor, docs: Optional[Documents] = None) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class SwiGLU(nn.Module):
    """persistent: swiglu, c_proj(SiLU(W_1 x) * W_3 x) without biases (the v2 persistent memory)."""

    def __init__(self, config: MosaicV1Config) -> None:
        super().__init__()
        hidden = config.d_ff if config.d_ff is not None else swiglu_hidden(config.n_embd)
        self.w1 = nn.Linear(config.n_embd, hidden, bias=False)
        self.w3 = nn.Linear(config.n_embd, hidden, bias=False)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=False)
        self.dropout = nn.Dropout(config.hd_p)

    def forward(self, x: torch.Tensor, docs: Optional[Documents] = None) -> torch.Tensor:
        return self.dropout(self.c_proj(F.silu(self.w1(x)) * self.w3(x)))


PERSISTENT = {"pmem": PersistentMemory, "mlp": MLP, "swiglu": SwiGLU}


class Block(nn.Module):
    def __init__(self, config: MosaicV1Config) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.cmem = ContextualMemory(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.pmem = PERSISTENT[config.persistent](config)

    def forward(self, x: torch.Tensor, docs: Optional[Documents] = None) -> torch.Tensor:
        x = x + self.cmem(self.ln_1(x), docs)
        return x + self.pmem(self.ln_2(x), docs)


class MosaicV1(LanguageModel):
    def __init__(self, config: MosaicV1Config) -> None:
        super().__init__()
        assert config.vocab_size is not None, "vocab_size must be resolved before building"
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # no positional embedding
        self.drop = nn.Dropout(config.hd_p)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Linear and Embedding weights only; per-head scalars and banks keep their own init.
        self.apply(init_linear_)
        scaled_residual_init_(self, config.n_layer)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight

    def forward(self, idx: torch.Tensor, doc_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """idx: (B, T) token ids; doc_ids: (B, T) document ids or None (one document per row)."""
        docs = None if doc_ids is None else as_documents(doc_ids, *idx.shape)
        x = self.drop(self.wte(idx))  # (B, T, C); any T: nothing here depends on block_size
        for block in self.blocks:
            x = block(x, docs)
        return self.lm_head(self.ln_f(x))  # (B, T, V)

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        """Bandwidths beta_h of every layer's memories (contextual, and persistent if pmem), under
        `memory/<layer>/<cmem|pmem>/beta`: the mean over heads for every layer, and per head
        (`.../beta/h3`) for the first layer only, as mosaic_v2 does, so that the number of tags grows
        with depth, not with depth x heads."""
        out: dict[str, float] = {}
        for layer, block in enumerate(self.blocks):
            memories = [("cmem", block.cmem)]
            if isinstance(block.pmem, PersistentMemory):
                memories.append(("pmem", block.pmem))
            for name, memory in memories:
                betas = gathered(memory.bandwidths()).float()
                out[memory_tag(layer, name, "beta")] = float(betas.mean())
                if layer == 0:
                    for h, beta in enumerate(betas.tolist()):
                        out[memory_tag(layer, name, f"beta/h{h}")] = beta
        return out
