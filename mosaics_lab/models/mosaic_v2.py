"""Memory Mosaics v2 ("Memory Mosaics at scale", Zhang & Bottou, NeurIPS 2025); MODELS.md section 2.

The block is a drop-in for the llama block, with attention replaced by two contextual memories
and no positional encoding anywhere:

    u = RMSNorm(x)                                   # one norm feeds both contextual memories
    x = x + W_o [ STM(u) ; LTM(u) ]                  # W_o: 2C -> C, one projection for both
    x = x + W_2( SiLU(W_1 RMSNorm(x)) * W_3 RMSNorm(x) )   # persistent memory: SwiGLU, hidden d_ff

A contextual memory is kernel regression over (key, value) pairs extracted from the sequence
itself: the key summarises the past (gated leaky average), the value peeks one step into the
future, and the query is the key scaled by a bandwidth that grows with the number of pairs the
memory holds, q_t = beta(n_t) * k_t with beta(n) = beta1 * n^alpha + beta0. The short- and
long-term memories differ only in which pairs a query sees (1-indexed positions):

    memory   query t sees pairs i with     n(t)
    STM      1 <= t - i <= h - 1           min(t - 1, h - 1)    (h pairs with stm_inclusive)
    LTM      t - i >= m                    max(0, t - m)        (m random in training)

With a document mask (`doc_ids`), positions count from each document's start: the leaky averages
restart there, a query sees only pairs of its own document, n(t) counts only those, and a value never
peeks across a document's end. The persistent memory is unchanged.

Every choice the papers leave open, or that an ablation sweep toggles, is a field of
`MosaicV2Config` whose default is the paper's choice.

Shape letters: B batch, T sequence length, C channels (n_embd), H heads, D head size (C / H),
S learned pairs per head (pmem only), V vocabulary.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from mosaics_lab.config.models import MosaicV2Config
from mosaics_lab.constants import memory_tag
from mosaics_lab.models.base import LanguageModel, gathered
from mosaics_lab.ops import (
    Documents,
    as_documents,
    kernel_regression,
    kernel_regression_weights,
    leaky_average,
    unit_rows,
)

_EPS = 1e-6  # added to norms before dividing, as in leaky_average
_MAX_LOG_BETA = 10.0  # beta0 = exp(min(th0, 10)), beta1 = exp(min(th1, 10))
_MAX_LOG_VALUE_SCALE = 15.0  # a_h = exp(min(|theta|, 15))
_MAX_LOG_KEY_SCALE = math.log(65535.0)  # v1's c_max: s = exp(min(10 phi, c_max))


def pairs_held(
    T: int, min_lag: int, max_lag: Optional[int], device: torch.device, docs: Optional[Documents] = None
) -> torch.Tensor:
    """n(t) for t = 1..T: how many pairs i with min_lag <= t - i <= max_lag exist, i.e. how many the
    memory holds for that query after all masks. (T,) float32, or (B, T) with a document mask, where
    t counts from the query's document start (only same-document pairs are visible).

    STM (lags 1..h-1): min(t - 1, h - 1). LTM (lags >= m): max(0, t - m)."""
    if docs is None:
        t = torch.arange(1, T + 1, device=device, dtype=torch.float32)
    else:
        t = docs.positions.to(torch.float32) + 1  # (B, T), 1-indexed inside the document
    n = (t - min_lag).clamp(min=0)  # pairs 1 .. t - min_lag
    if max_lag is not None:
        n = n.clamp(max=max_lag - min_lag + 1)  # at most the window's width
    return n


class AdaptiveBandwidth(nn.Module):
    """beta(n) = beta1 * n^alpha + beta0 per head: the kernel sharpens as the memory fills up.

    beta0 = exp(min(th0, 10)), beta1 = exp(min(th1, 10)), alpha = min(|th_a|, 1); th0 = th1 = 1.5 and
    th_a = 1/3 at init. `alpha_frozen` replaces th_a by a constant buffer; `beta0_zero` drops beta0.
    """

    def __init__(self, n_head: int, alpha_frozen: Optional[float], beta0_zero: bool) -> None:
        super().__init__()
        self.th1 = nn.Parameter(torch.full((n_head,), 1.5))
        self.th0 = None if beta0_zero else nn.Parameter(torch.full((n_head,), 1.5))
        if alpha_frozen is None:
            self.th_a = nn.Parameter(torch.full((n_head,), 1.0 / 3.0))
        else:
            self.th_a = None
            self.register_buffer("frozen_alpha", torch.full((n_head,), float(alpha_frozen)))

    def beta0(self) -> torch.Tensor:
        """(H,)"""
        if self.th0 is None:
            return torch.zeros_like(self.th1)
        return torch.exp(self.th0.clamp(max=_MAX_LOG_BETA))

    def beta1(self) -> torch.Tensor:
        """(H,)"""
        return torch.exp(self.th1.clamp(max=_MAX_LOG_BETA))

    def alpha(self) -> torch.Tensor:
        """(H,)"""
        return self.frozen_alpha if self.th_a is None else self.th_a.abs().clamp(max=1.0)

    def forward(self, n: torch.Tensor) -> torch.Tensor:
        """n: (T,) or (B, T) pairs held by each query -> beta: (H, T) or (B, H, T) float32."""
        alpha = self.alpha().float().unsqueeze(-1)  # (H, 1)
        n = n.unsqueeze(-2)  # (..., 1, T)
        # 0^alpha is 0, but its derivative in alpha is 0 * log 0 = NaN; rows with n = 0 see no pair
        # and output 0 whatever beta, so only the gradient needs the guard.
        grown = torch.where(n > 0, n.clamp(min=1.0) ** alpha, 0.0)  # (..., H, T)
        return self.beta1().float().unsqueeze(-1) * grown + self.beta0().float().unsqueeze(-1)

    def diagnostics(self, prefix: str, n_ref: int, per_head: bool) -> dict[str, float]:
        with torch.no_grad():
            beta0, beta1, alpha = (gathered(x).float() for x in (self.beta0(), self.beta1(), self.alpha()))
            values = {"beta": beta1 * n_ref**alpha + beta0, "beta0": beta0, "beta1": beta1, "alpha": alpha}
            out = {f"{prefix}{name}": float(v.mean()) for name, v in values.items()}
            if per_head:
                for name in ("beta0", "beta1", "alpha"):
                    out.update({f"{prefix}{name}/h{h}": x for h, x in enumerate(values[name].tolist())})
        return out


class FixedBandwidth(nn.Module):
    """One learned beta per head whatever n, v1 style: the query and the keys both carry the key
    scale s = exp(min(10 phi, c_max)), so beta = s^2; phi = 0.1 at init (beta = e^2)."""

    def __init__(self, n_head: int) -> None:
        super().__init__()
        self.phi = nn.Parameter(torch.full((n_head,), 0.1))

    def per_head(self) -> torch.Tensor:
        """(H,)"""
        return torch.exp((10.0 * self.phi).clamp(max=_MAX_LOG_KEY_SCALE)) ** 2

    def forward(self, n: torch.Tensor) -> torch.Tensor:
        """n: (T,) or (B, T) -> beta: (H, T) or (B, H, T) float32, constant in n."""
        beta = self.per_head().float().unsqueeze(-1)  # (H, 1)
        return beta.expand(*n.shape[:-1], -1, n.shape[-1])

    def diagnostics(self, prefix: str, n_ref: int, per_head: bool) -> dict[str, float]:
        with torch.no_grad():
            beta = gathered(self.per_head()).float()
            out = {f"{prefix}beta": float(beta.mean())}
            if per_head:
                out.update({f"{prefix}beta/h{h}": x for h, x in enumerate(beta.tolist())})
        return out


def make_bandwidth(n_head: int, schedule: str, alpha_frozen: Optional[float], beta0_zero: bool) -> nn.Module:
    if schedule == "fixed":
        return FixedBandwidth(n_head)
    return AdaptiveBandwidth(n_head, alpha_frozen, beta0_zero)


class KeyExtractor(nn.Module):
    """Gated time-variant key extractor: k = leaky_average(W_phi x, log_decay, log_gate), one log-gate
    (w_g . x) and one log-decay (-|w_lambda . x|) per head and time step, unit-norm keys, no scale
    (the bandwidth supplies it). `kind` selects the ablations listed in MosaicV2Config.key_extractor.
    """

    def __init__(self, config: MosaicV2Config, kind: str) -> None:
        super().__init__()
        C, H = config.n_embd, config.n_head
        self.n_head, self.head_size, self.kind = H, config.head_size, kind
        self.channel_gates = config.gate_granularity == "channel"
        self.phi = nn.Linear(C, C, bias=False)  # W_phi
        has_gate = kind in ("gated", "gate_only")
        self.gate = nn.Linear(C, C if self.channel_gates else H, bias=False) if has_gate else None  # w_g
        self.decay = nn.Linear(C, H, bias=False) if kind in ("gated", "decay_only") else None  # w_lambda
        # v1's constant decay: log_decay_h = -10 |theta_h|; head 0 remembers long, the last head
        # almost only the current token.
        constant = kind in ("gate_only", "leaky")
        self.theta = nn.Parameter(torch.linspace(0.5, 5.0, H) / 10.0) if constant else None

    def forward(self, u: torch.Tensor, docs: Optional[Documents] = None) -> torch.Tensor:
        """u: (B, T, C) -> unit-norm keys k: (B, H, T, D) float32; the average restarts at documents."""
        B, T, C = u.shape
        H, D = self.n_head, self.head_size
        x = self.phi(u).view(B, T, H, D).transpose(1, 2).float()  # (B, H, T, D)
        if self.kind == "none":
            return unit_rows(x, _EPS)
        if self.decay is not None:
            log_decay = -self.decay(u).float().abs().transpose(1, 2)  # (B, H, T)
        else:
            log_decay = -10.0 * self.theta.float().abs().unsqueeze(-1)  # (H, 1)
        log_gate = None
        if self.gate is not None:
            g = self.gate(u).float()  # (B, T, H) or (B, T, C)
            if self.channel_gates:
                g = g.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
                # kbar = sum exp(g_i + decays) * x_i per channel. leaky_average takes one log-gate per
                # head, so pass the head's largest and fold the rest, exp(g - max) <= 1, into x. The
                # split point cancels exactly, so the max needs no gradient.
                log_gate = g.detach().amax(-1)  # (B, H, T)
                x = x * torch.exp(g - log_gate.unsqueeze(-1))
            else:
                log_gate = g.transpose(1, 2)  # (B, H, T)
        # The projections above may run in bf16 under autocast; the recurrence stays float32 (the op's
        # contract), so autocast must not turn its matmuls back into bf16.
        with torch.autocast(u.device.type, enabled=False):
            return leaky_average(x, log_decay, log_gate, doc_ids=docs)


class ValueExtractor(nn.Module):
    """Values peek one step ahead: vbar_t = gamma_h W_psi x_t + (1 - gamma_h) W_psi x_{t+1} (with
    W_psi x_{T+1} = 0), v_t = a_h vbar_t / ||vbar_t||, a_h = exp(min(|theta_h|, 15)), theta = 0 at init.
    A query at t only sees pairs i <= t - 1, whose values use tokens <= t, so peeking stays causal.
    """

    def __init__(self, config: MosaicV2Config) -> None:
        super().__init__()
        C, H = config.n_embd, config.n_head
        self.n_head, self.head_size, self.peek = H, config.head_size, config.value_peek
        self.psi = nn.Linear(C, C, bias=False)  # W_psi
        # gamma unconstrained, as in v1; frozen at 1 (`none`) or 0 (`future_only`) it is no parameter.
        self.gamma = nn.Parameter(torch.rand(H)) if config.value_peek == "learned" else None
        self.theta = nn.Parameter(torch.zeros(H))

    def forward(self, u: torch.Tensor, docs: Optional[Documents] = None) -> torch.Tensor:
        """u: (B, T, C) -> values v: (B, H, T, D) float32, norm a_h."""
        B, T, C = u.shape
        v = self.psi(u).view(B, T, self.n_head, self.head_size).transpose(1, 2).float()  # (B, H, T, D)
        following = F.pad(v[:, :, 1:], (0, 0, 0, 1))  # W_psi x_{t+1}, zero after the last step
        if docs is not None:
            # and after a document's last step: a value never peeks into the next document.
            following = following.masked_fill(docs.ends[:, None, :, None], 0.0)
        if self.peek == "learned":
            gamma = self.gamma.float().view(-1, 1, 1)  # (H, 1, 1)
            vbar = gamma * v + (1.0 - gamma) * following
        else:
            vbar = v if self.peek == "none" else following
        # |theta| written so that its gradient at 0 is +1: theta starts at exactly 0 (MODELS.md), where
        # torch.abs has gradient 0 and a_h would stay 1 forever. Same values, another subgradient.
        theta = self.theta.float()
        log_scale = torch.where(theta >= 0, theta, -theta).clamp(max=_MAX_LOG_VALUE_SCALE)
        scale = torch.exp(log_scale).view(-1, 1, 1)  # (H, 1, 1)
        return unit_rows(vbar, _EPS, scale)  # a_h vbar / (||vbar|| + eps)


class ContextualMemory(nn.Module):
    """An associative memory over the sequence's own (key, value) pairs; STM and LTM differ only in
    the lags a query sees (their `lags`) and in their bandwidth parameters."""

    def __init__(self, config: MosaicV2Config, bandwidth: nn.Module) -> None:
        super().__init__()
        self.key = KeyExtractor(config, config.key_extractor)
        self.value = ValueExtractor(config)
        self.bandwidth = bandwidth

    def retrieve(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        min_lag: int,
        max_lag: Optional[int],
        docs: Optional[Documents] = None,
    ) -> torch.Tensor:
        """Kernel regression with this memory's bandwidth. k, v: (B, H, T, D) -> y: (B, H, T, D).

        q_t = beta(n_t) * k_t with n_t the pairs query t sees; rows with n = 0 come out 0."""
        T = k.shape[-2]
        beta = self.bandwidth(pairs_held(T, min_lag, max_lag, k.device, docs))  # (H, T) or (B, H, T)
        # q . k reaches beta, 1e4 and more, where a bf16 q or k would put errors of beta * 4e-3 into the
        # logits: float32 inputs, and no autocast to turn the op's matmuls back into bf16.
        k, v = k.float(), v.float()
        q = beta.unsqueeze(-1) * k  # (B, H, T, D)
        with torch.autocast(k.device.type, enabled=False):
            return kernel_regression(q, k, v, min_lag=min_lag, max_lag=max_lag, doc_ids=docs)

    def weights(
        self, u: torch.Tensor, min_lag: int, max_lag: Optional[int], docs: Optional[Documents] = None
    ) -> torch.Tensor:
        """What `read` sums the values with: softmax weights [query t, pair i], (B, H, T, T), recomputed
        from q = beta(n) k and k on the plain path (models.retrievals)."""
        k = self.key(u, docs).float()  # (B, H, T, D)
        beta = self.bandwidth(pairs_held(k.shape[-2], min_lag, max_lag, k.device, docs))  # (H, T) / (B, H, T)
        return kernel_regression_weights(beta.unsqueeze(-1) * k, k, min_lag, max_lag, doc_ids=docs)

    def read(
        self, u: torch.Tensor, min_lag: int, max_lag: Optional[int], docs: Optional[Documents] = None
    ) -> torch.Tensor:
        """u: (B, T, C) -> the memory's output for every query, heads concatenated: (B, T, C)."""
        B, T, C = u.shape
        y = self.retrieve(self.key(u, docs), self.value(u, docs), min_lag, max_lag, docs)  # (B, H, T, D)
        return y.transpose(1, 2).reshape(B, T, C).to(u.dtype)


class ShortTermMemory(ContextualMemory):
    """Pairs from the last h - 1 steps (h with stm_inclusive): the recent past, O(T h)."""

    def __init__(self, config: MosaicV2Config) -> None:
        bandwidth = make_bandwidth(
            config.n_head, config.stm_bandwidth, config.stm_alpha_frozen, config.stm_beta0_zero
        )
        super().__init__(config, bandwidth)
        self.max_lag = config.stm_window if config.stm_inclusive else config.stm_window - 1

    def lags(self) -> tuple[int, int]:
        return 1, self.max_lag

    def reference_pairs(self) -> int:
        """n at which diagnostics report beta: a full window."""
        return self.max_lag

    def forward(self, u: torch.Tensor, docs: Optional[Documents] = None) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)"""
        return self.read(u, *self.lags(), docs)

    def retrieval_weights(self, u: torch.Tensor, docs: Optional[Documents] = None) -> torch.Tensor:
        """Same arguments as forward -> (B, H, T, T) weights."""
        return self.weights(u, *self.lags(), docs)


class LongTermMemory(ContextualMemory):
    """Pairs at least m steps back: the whole distant past. Overlaps the STM on purpose (m < h)."""

    def __init__(self, config: MosaicV2Config) -> None:
        bandwidth = make_bandwidth(
            config.n_head, config.ltm_bandwidth, config.ltm_alpha_frozen, config.ltm_beta0_zero
        )
        super().__init__(config, bandwidth)
        self.n_ref = max(1, config.block_size - config.ltm_delay_eval)

    def lags(self, delay: int) -> tuple[int, None]:
        return delay, None

    def reference_pairs(self) -> int:
        """n at which diagnostics report beta: the last query of a training-length sequence at eval."""
        return self.n_ref

    def forward(self, u: torch.Tensor, delay: int, docs: Optional[Documents] = None) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)"""
        return self.read(u, *self.lags(delay), docs)

    def retrieval_weights(
        self, u: torch.Tensor, delay: int, docs: Optional[Documents] = None
    ) -> torch.Tensor:
        """Same arguments as forward -> (B, H, T, T) weights."""
        return self.weights(u, *self.lags(delay), docs)


class SwiGLU(nn.Module):
    """The paper's persistent memory: a SwiGLU FFN, W_2(SiLU(W_1 x) * W_3 x), hidden d_ff."""

    def __init__(self, config: MosaicV2Config) -> None:
        super().__init__()
        self.w1 = nn.Linear(config.n_embd, config.hidden, bias=False)
        self.w3 = nn.Linear(config.n_embd, config.hidden, bias=False)
        self.w2 = nn.Linear(config.hidden, config.n_embd, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, docs: Optional[Documents] = None) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); no sequence mixing, so documents change nothing."""
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class PersistentMemory(nn.Module):
    """v1's persistent memory, compact (MODELS.md 1, one bank): S learned (key, value) pairs per head,
    read without mask or position by a v1 leaky key scaled by a fixed learned bandwidth, times a
    per-head output scale exp(10 psi_h) (psi = -0.05 at init), then c_proj. Kept here rather than
    imported from mosaic_v1 so that the v2 file stands alone."""

    def __init__(self, config: MosaicV2Config) -> None:
        super().__init__()
        C, H, D, S = config.n_embd, config.n_head, config.head_size, config.bank_size
        self.n_head, self.head_size = H, D
        self.key = KeyExtractor(config, "leaky")
        self.bandwidth = FixedBandwidth(H)
        self.bank_keys = nn.Parameter(torch.randn(H, S, D) / math.sqrt(D))  # unnormalised, as in v1
        self.bank_values = nn.Parameter(torch.randn(H, S, D) / math.sqrt(D))
        self.psi = nn.Parameter(torch.full((H,), -0.05))
        self.c_proj = nn.Linear(C, C, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, docs: Optional[Documents] = None) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); the query's leaky average restarts at documents."""
        B, T, C = x.shape
        with torch.autocast(x.device.type, enabled=False):
            q = self.bandwidth.per_head().float().view(-1, 1, 1) * self.key(x, docs)  # (B, H, T, D)
            K = self.bank_keys.float().expand(B, -1, -1, -1)  # (B, H, S, D)
            V = self.bank_values.float().expand(B, -1, -1, -1)
            z = F.scaled_dot_product_attention(q, K, V, scale=1.0)  # (B, H, T, D), no mask
            z = torch.exp(10.0 * self.psi.float()).view(-1, 1, 1) * z
        z = z.transpose(1, 2).reshape(B, T, C).to(x.dtype)
        return self.dropout(self.c_proj(z))


class Block(nn.Module):
    """Pre-norm block; a drop-in for the llama block (`forward(x, docs)`), with `ltm_delay` (m, or
    None without an LTM) passed in, so every layer of one forward uses the same m and activation
    checkpointing recomputes with it.

    `zeroed_memories` names the contextual memories whose output is replaced by zeros in W_o's input
    (not computed): empty, except inside `models.ablation.ablated`, which sets and restores it."""

    ablatable_memories = ("stm", "ltm")
    zeroed_memories: frozenset[str] = frozenset()

    def __init__(self, config: MosaicV2Config) -> None:
        super().__init__()
        C = config.n_embd
        self.memory_norm = nn.RMSNorm(C, eps=config.norm_eps)
        self.stm = ShortTermMemory(config) if config.memories in ("stm+ltm", "stm_only") else None
        self.ltm = LongTermMemory(config) if config.memories in ("stm+ltm", "ltm_only") else None
        n_memories = (self.stm is not None) + (self.ltm is not None)
        self.c_proj = nn.Linear(n_memories * C, C, bias=False)  # W_o
        self.resid_dropout = nn.Dropout(config.dropout)
        if config.persistent == "none":
            self.ffn_norm, self.ffn = None, None
        else:
            self.ffn_norm = nn.RMSNorm(C, eps=config.norm_eps)
            self.ffn = SwiGLU(config) if config.persistent == "swiglu" else PersistentMemory(config)

    def forward(
        self, x: torch.Tensor, docs: Optional[Documents] = None, ltm_delay: Optional[int] = None
    ) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)"""
        u = self.memory_norm(x)
        recalled = []
        if self.stm is not None:
            recalled.append(u.new_zeros(u.shape) if "stm" in self.zeroed_memories else self.stm(u, docs))
        if self.ltm is not None:
            assert ltm_delay is not None, "a block with a long-term memory needs the delay m"
            zeroed = "ltm" in self.zeroed_memories
            recalled.append(u.new_zeros(u.shape) if zeroed else self.ltm(u, ltm_delay, docs))
        x = x + self.resid_dropout(self.c_proj(torch.cat(recalled, dim=-1)))  # [STM; LTM]: (B, T, 2C)
        if self.ffn is not None:
            x = x + self.ffn(self.ffn_norm(x), docs)
        return x


def _trunc_normal_(weight: torch.Tensor, std: float) -> None:
    nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-3.0 * std, b=3.0 * std)


class MosaicV2(LanguageModel):
    def __init__(self, config: MosaicV2Config) -> None:
        super().__init__()
        assert config.vocab_size is not None, "vocab_size must be resolved before building"
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = nn.RMSNorm(config.n_embd, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # The LTM delay of the current optimiser step (set by begin_step), and the model's own
        # generator for training forwards outside a trainer. Neither touches torch's global RNG.
        self._step_delay: Optional[int] = None
        self._delay_generator = torch.Generator().manual_seed(0)
        self._init_weights()
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_embeddings.weight

    def _init_weights(self) -> None:
        """Truncated normal at +-3 sigma (MODELS.md 2). Embedding and classifier sigma = 1/sqrt(2C).
        In block l, the SwiGLU's output map gets sigma = 1/sqrt(2 d_ff (l+1)); every other linear map
        (memory maps, W_o: 2C -> C included, FFN inputs) sigma = 1/sqrt(2 C (l+1)).
        Per-head scalars and pmem banks keep the values their constructors give them."""
        C = self.config.n_embd
        _trunc_normal_(self.tok_embeddings.weight, 1.0 / math.sqrt(2 * C))
        _trunc_normal_(self.lm_head.weight, 1.0 / math.sqrt(2 * C))
        for layer, block in enumerate(self.blocks):
            ffn_out = block.ffn.w2 if isinstance(block.ffn, SwiGLU) else None
            for module in block.modules():
                if isinstance(module, nn.Linear):
                    width = self.config.hidden if module is ffn_out else C
                    _trunc_normal_(module.weight, 1.0 / math.sqrt(2 * width * (layer + 1)))

    @property
    def has_ltm(self) -> bool:
        return self.config.memories != "stm_only"

    def begin_step(self, step: int, seed: int = 0) -> None:
        """Fix the training LTM delay m for optimiser step `step`: a pure function of (seed, step),
        drawn from a generator of its own, so every micro-batch of the step and every rank get the
        same m, torch's global RNG (dropout, data) is not consumed, and a resumed run, which restores
        the step, draws the same m again."""
        lo, hi = self.config.ltm_delay_train[0], self.config.ltm_delay_train[-1]
        generator = torch.Generator().manual_seed((seed * 1_000_003 + step) % 2**63)
        self._step_delay = int(torch.randint(lo, hi + 1, (), generator=generator))

    def ltm_delay(self) -> Optional[int]:
        """m for the next forward: None without a long-term memory, ltm_delay_eval in eval mode; in
        training the fixed delay, or the current step's (begin_step), or, for a model trained outside
        the trainer without begin_step, a fresh draw of the model's own generator per forward."""
        if not self.has_ltm:
            return None
        if not self.training:
            return self.config.ltm_delay_eval
        lo, hi = self.config.ltm_delay_train[0], self.config.ltm_delay_train[-1]
        if lo == hi:
            return lo
        if self._step_delay is not None:
            return self._step_delay
        return int(torch.randint(lo, hi + 1, (), generator=self._delay_generator))

    def forward(self, idx: torch.Tensor, doc_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """idx: (B, T) token ids; doc_ids: (B, T) document ids or None (one document per row)."""
        docs = None if doc_ids is None else as_documents(doc_ids, *idx.shape)
        m = self.ltm_delay()
        x = self.drop(self.tok_embeddings(idx))  # (B, T, C)
        for block in self.blocks:
            x = block(x, docs, ltm_delay=m)
        return self.lm_head(self.norm(x))  # (B, T, V)

    def diagnostics(self) -> dict[str, float]:
        """Bandwidths, under `memory/<layer>/<stm|ltm>/...`: for every layer the mean over heads of
        beta at a reference n (STM: a full window; LTM: block_size - ltm_delay_eval), and of beta0,
        beta1, alpha (adaptive); per head (`.../beta0/h3` etc.) for the first layer only, so that the
        number of tags grows with depth, not with depth x heads."""
        out: dict[str, float] = {}
        for layer, block in enumerate(self.blocks):
            for name in ("stm", "ltm"):
                memory = getattr(block, name)
                if memory is not None:
                    prefix = memory_tag(layer, name, "")
                    out.update(memory.bandwidth.diagnostics(prefix, memory.reference_pairs(), layer == 0))
        return out
