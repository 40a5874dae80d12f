"""Leaky average: the key extractor's recurrence, in O(T) chunked form and as a naive O(T^2) spec.

Shapes: B batch, H heads, T time steps, D head dimension.

    kbar_t = exp(log_gate_t) * x_t + exp(log_decay_t) * kbar_{t-1},   kbar_0 = 0
    k_t    = kbar_t / ||kbar_t||_2

Unrolled, kbar_t = sum_{i<=t} exp(G_i + sum_{i<l<=t} L_l) x_i with G = log_gate, L = log_decay.
With `doc_ids`, the state restarts at each document start: L_t = -inf there, so nothing of an
earlier document reaches a later one.

The fast form (`leaky_average`) splits time into chunks of C steps. Inside a chunk the (C x C)
lower-triangular weight matrix is built in log space and applied with one matmul; the state at
each chunk end obeys the same recurrence one level up (input = the chunk's own end state, decay =
the chunk's total decay), so it is solved by the same function recursively, with T / C steps.
Every intermediate is carried as `exp(log_scale_t) * h_t`, where log_scale_t is the (detached)
largest log weight of row t, so h stays O(C^depth * max|x|) for any gate or decay.

With no gate and one decay per head, the same at every step and in every sequence (v1's keys, a
log_decay of shape (H, 1) or (1, H, 1)), the chunk weights exp(L_h (t - i)) are one (C x C) matrix
per head shared by all chunks: it is built once and applied with one matmul per head, instead of
building B * N matrices in log space (1.3-1.4x faster forward + backward on 2 CPU threads at
T = 512..4096, BENCHMARKS.md). The chunk-end recurrence is then constant too and takes the same form.

Normalisation contract (MODELS.md 0): the scale cancels in kbar / ||kbar||, so k_t = h_t / ||h_t||,
and the guard against division by zero is applied to the rescaled state, k_t = h_t / (||h_t|| +
eps). ||k_t|| is 1 (to rounding) for any log_gate in [-1000, 1000] as long as ||h_t|| >> eps, which
holds whenever the inputs carrying the largest weights are not themselves ~0; an all-zero x gives
k = 0. (Adding eps to the unscaled norm ~exp(log_gate) instead would shrink the key towards 0 for
strongly negative gates.) The reference computes the same thing in float64 log space.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mosaics_lab.ops.documents import Documents, as_documents
from mosaics_lab.ops.norms import unit_rows

__all__ = ["leaky_average", "leaky_average_reference"]


def _expand_log_coefficient(
    name: str, value: torch.Tensor, shape: tuple[int, int, int], dtype: torch.dtype
) -> torch.Tensor:
    try:
        return value.to(dtype).expand(shape)
    except RuntimeError as err:
        raise ValueError(
            f"{name} of shape {tuple(value.shape)} does not broadcast to (B, H, T) = {shape}"
        ) from err


def _chunked(
    x: torch.Tensor, log_decay: torch.Tensor, chunk: int
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """x (B, H, T, D) and log_decay (B, H, T) padded to N whole chunks of C steps and split into them:
    (B, H, N, C, D), (B, H, N, C), C, N. Padding sits after the last real step, so it cannot reach any
    real output."""
    B, H, T, D = x.shape
    C = min(chunk, T)
    N = -(-T // C)
    pad = N * C - T
    if pad:
        x = F.pad(x, (0, 0, 0, pad))
        log_decay = F.pad(log_decay, (0, pad))
    return x.reshape(B, H, N, C, D), log_decay.reshape(B, H, N, C), C, N


def _within_chunks(xc: torch.Tensor, Lc: torch.Tensor, Gc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each chunk's own leaky sums, as if nothing entered it: (h, m) with sum_{i<=t in chunk}
    exp(G_i + sum_{i<l<=t} L_l) x_i = exp(m_t) h_t. xc (B, H, N, C, D); Lc, Gc (B, H, N, C)."""
    B, H, N, C, _ = xc.shape
    ones = torch.ones(C, C, dtype=torch.bool, device=xc.device)
    strictly_lower = ones.tril(-1)
    lower = ones.tril()
    # seg[t, i] = sum_{i < l <= t} L_l, summed directly (all terms share a sign) rather than as a
    # difference of prefix sums, which loses the small decays next to a large one in float32.
    seg = Lc.unsqueeze(-1).expand(B, H, N, C, C).masked_fill(~strictly_lower, 0.0).cumsum(-2)
    # The causal mask as an additive bias added in place (no copy forward or backward: exp gives
    # exactly 0 gradient at -inf anyway); same values as masked_fill.
    causal = torch.zeros(C, C, dtype=xc.dtype, device=xc.device).masked_fill_(~lower, float("-inf"))
    log_w = (seg + Gc.unsqueeze(-2)).add_(causal)  # (B, H, N, C, C) [t, i]
    # The row max is a scale only (the result does not depend on it), so it needs no gradient.
    m = log_w.detach().amax(-1)  # (B, H, N, C); finite: the diagonal holds G_t
    return torch.exp(log_w - m.unsqueeze(-1)) @ xc, m  # (B, H, N, C, D), (B, H, N, C)


def _within_chunks_constant_decay(
    xc: torch.Tensor, log_decay: torch.Tensor, log_gate: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`_within_chunks` for one decay and one gate per head, the same at every step and in every
    sequence (v1's keys, gate 1): the (C x C) weights exp(G + L (t - i)) are then one matrix per
    head, shared by every chunk, built once and applied with one matmul per head. xc (B, H, N, C,
    D); log_decay and log_gate (H,) or (1,), log_gate None for 0. Returns h (B, H, N, C, D) and m
    (1, H or 1, 1, C)."""
    B, H, N, C, D = xc.shape
    r = torch.arange(C, device=xc.device)
    lag = (r.unsqueeze(-1) - r).to(xc.dtype)  # (C, C) [t, i]
    L = log_decay.view(-1, 1, 1)  # (H or 1, 1, 1)
    # L * 0 on the diagonal would be NaN for L = -inf: the diagonal is 0 whatever L.
    log_w = torch.where(lag > 0, L * lag, 0.0).masked_fill(lag < 0, float("-inf"))  # (H or 1, C, C)
    m = log_w.detach().amax(-1)  # (H or 1, C): 0 for a decay, L t for growth
    w = torch.exp(log_w - m.unsqueeze(-1)).expand(H, C, C)
    if log_gate is not None:  # a common factor exp(G) of every weight: a scale only, no gradient
        m = m + log_gate.detach().view(-1, 1)
    # One (C x C) @ (C x B N D) product per head instead of B N small ones.
    h = torch.einsum("htc,bhncd->bhntd", w, xc)  # (B, H, N, C, D)
    return h, m.view(1, -1, 1, C)


def _scaled_leaky_sum(
    x: torch.Tensor,
    log_decay: torch.Tensor,
    log_gate: torch.Tensor | None,
    chunk: int,
    constant: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (h, log_scale) with kbar_t = exp(log_scale_t) * h_t; x's dtype, log_scale detached.

    x: (B, H, T, D); log_decay: (B, H, T); log_gate: (B, H, T). `constant`: (decay, gate or None),
    each (H,) or (1,), when log_decay and log_gate repeat them over batch and time (the
    constant-decay fast form; log_gate is then unused).
    """
    B, H, T, D = x.shape
    xc, Lc, C, N = _chunked(x, log_decay, chunk)
    if constant is not None:
        h, m = _within_chunks_constant_decay(xc, *constant)
        m = m.expand(B, H, N, C)
    else:
        Gc = F.pad(log_gate, (0, N * C - T)).reshape(B, H, N, C)
        h, m = _within_chunks(xc, Lc, Gc)
    if N == 1:
        return h.reshape(B, H, C, D)[:, :, :T], m.reshape(B, H, C)[:, :, :T]

    # Chunk-end states: state_n = exp(A_n) * state_{n-1} + exp(m_end_n) * h_end_n, the same
    # recurrence on T / C steps.
    decay_from_start = Lc.cumsum(-1)  # (B, H, N, C): decay applied to the state entering the chunk
    ends = None
    if constant is not None:
        # Constant again one level up: A_n = C L and m_end_n = m_{C-1} in every chunk. (The last
        # chunk's padding makes its own A and m_end differ, but they only shape the state leaving
        # the last chunk, which nothing uses.)
        ends = (constant[0] * C, m[0, :, 0, -1])
    h_state, m_state = _scaled_leaky_sum(h[:, :, :, -1], decay_from_start[..., -1], m[..., -1], chunk, ends)
    # The state entering chunk n is the one leaving chunk n - 1; nothing enters chunk 0.
    h_prev = F.pad(h_state[:, :, :-1], (0, 0, 1, 0))  # (B, H, N, D)
    m_prev = F.pad(m_state[:, :, :-1], (1, 0), value=float("-inf"))  # (B, H, N)
    log_carry = decay_from_start + m_prev.unsqueeze(-1)  # (B, H, N, C)
    scale = torch.maximum(m, log_carry.detach())
    h = torch.exp(m - scale).unsqueeze(-1) * h + torch.exp(log_carry - scale).unsqueeze(
        -1
    ) * h_prev.unsqueeze(-2)
    return h.reshape(B, H, N * C, D)[:, :, :T], scale.reshape(B, H, N * C)[:, :, :T]


def _per_head_constant(log_decay: torch.Tensor, H: int) -> torch.Tensor | None:
    """The (H,) or (1,) decay when log_decay has no batch and no time extent (shape (H,), (H, 1),
    (1, H, 1) and the like, as v1's keys pass it), else None."""
    if log_decay.dim() > 3:
        return None
    shape = (1,) * (3 - log_decay.dim()) + tuple(log_decay.shape)
    if shape[0] != 1 or shape[2] != 1 or shape[1] not in (1, H):
        return None
    return log_decay.reshape(shape[1])


def leaky_average(
    x: torch.Tensor,
    log_decay: torch.Tensor,
    log_gate: torch.Tensor | None = None,
    *,
    doc_ids: torch.Tensor | Documents | None = None,
    eps: float = 1e-6,
    chunk_size: int = 32,
) -> torch.Tensor:
    """Normalised leaky average of x over time, O(T) time and memory.

    x: (B, H, T, D). log_decay: broadcastable to (B, H, T), values <= 0 (larger values are computed
    correctly too, but are not a decay). log_gate: broadcastable to (B, H, T), any real value, or
    None for a gate of 1. doc_ids: (B, T) integer document ids (or their `Documents`), or None for
    one document; the state restarts at each document start. Computed in float32 (float64 for
    float64 inputs), returned in x's
    dtype, shape (B, H, T, D). eps guards the division by the rescaled norm (module docstring).
    chunk_size: 32 was the fastest of 16/32/64/128 fwd + bwd on 2 CPU cores at T = 512..16k; the
    result does not depend on it beyond rounding.
    """
    if x.dim() != 4:
        raise ValueError(f"x must have shape (B, H, T, D), got {tuple(x.shape)}")
    if chunk_size < 2:
        # Chunks of 1 would never shrink the chunk-end recurrence.
        raise ValueError(f"chunk_size must be >= 2, got {chunk_size}")
    B, H, T, D = x.shape
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    L = _expand_log_coefficient("log_decay", log_decay, (B, H, T), dtype)
    G = (
        x.new_zeros((), dtype=dtype).expand(B, H, T)
        if log_gate is None
        else _expand_log_coefficient("log_gate", log_gate, (B, H, T), dtype)
    )
    if T == 0:
        return x.clone()
    docs = None if doc_ids is None else as_documents(doc_ids, B, T)
    if docs is not None and not x.is_cuda and not docs.has_boundaries:
        # One document per row: the mask changes nothing, so take the unmasked form (bit for bit the
        # unmasked output). Not on CUDA, where asking would cost a host sync.
        docs = None
    if docs is not None:
        # A document start forgets everything before it: a decay of exp(-inf) = 0. -inf only ever
        # meets finite numbers or itself in sums and maxima, so no NaN arises, and where() sends no
        # gradient into the replaced decays.
        L = torch.where(docs.starts.unsqueeze(1), float("-inf"), L)
    constant = None
    if log_gate is None and docs is None:
        constant = _per_head_constant(log_decay, H)
    if constant is not None:
        h, _ = _scaled_leaky_sum(x.to(dtype), L, G, chunk_size, (constant.to(dtype), None))
    else:
        h, _ = _scaled_leaky_sum(x.to(dtype), L, G, chunk_size)
    # kbar = exp(log_scale) * h: the scale cancels, eps guards the rescaled norm.
    k = unit_rows(h, eps)
    return k.to(x.dtype)


def leaky_average_reference(
    x: torch.Tensor,
    log_decay: torch.Tensor,
    log_gate: torch.Tensor | None = None,
    *,
    doc_ids: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """The spec of `leaky_average`: the full (T x T) log-weight matrix in float64, O(T^2).

    Row t is rescaled by its largest log weight before exp (the scale cancels in the normalisation),
    so it is exact for any gate, and eps guards the rescaled norm, the contract of the fast form.
    doc_ids: (B, T) or None; a pair of positions in different documents has weight 0.
    """
    if x.dim() != 4:
        raise ValueError(f"x must have shape (B, H, T, D), got {tuple(x.shape)}")
    B, H, T, D = x.shape
    L = log_decay.to(torch.float64).expand(B, H, T)
    G = (
        torch.zeros((), dtype=torch.float64, device=x.device)
        if log_gate is None
        else log_gate.to(torch.float64)
    )
    G = G.expand(B, H, T)
    S = L.cumsum(-1)
    # log w[t, i] = G_i + S_t - S_i for i <= t: weight of x_i in kbar_t.
    log_w = G.unsqueeze(-2) + S.unsqueeze(-1) - S.unsqueeze(-2)
    visible = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    if doc_ids is not None:
        visible = visible & (doc_ids.unsqueeze(-1) == doc_ids.unsqueeze(-2)).unsqueeze(1)  # (B, 1, T, T)
    log_w = log_w.masked_fill(~visible, float("-inf"))
    row_max = log_w.detach().amax(-1, keepdim=True)  # finite: the diagonal is always visible
    h = torch.exp(log_w - row_max) @ x.to(torch.float64)
    k = h / (torch.linalg.vector_norm(h, dim=-1, keepdim=True) + eps)
    return k.to(x.dtype)
