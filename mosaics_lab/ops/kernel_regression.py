"""Kernel regression over stored (key, value) pairs: the retrieval of every associative memory.

Shapes: B batch, H heads, T time steps, D head dimension (Dv for values, normally = D).

    y_t = sum_{i visible from t} softmax_i(q_t . k_i) v_i,   visible: min_lag <= t - i <= max_lag

Scale 1 (the bandwidth is inside q); logits in float32 (float64 for float64 inputs); rows with no
visible pair are exactly 0 with zero (finite) gradients. With `doc_ids` (B, T), a query also sees
only pairs of its own document. `dropout_p` drops softmax weights (the authors' dropout on the
memory's attention weights), as SDPA's own dropout does; pass 0 outside training.

The plain path first shifts time by min_lag: query t against key t - min_lag - j becomes query
t' against key t' - j, j in [0, window], window = max_lag - min_lag (None = unbounded). After the
shift the diagonal is always visible, so SDPA never meets a fully masked row (its convention for
those differs across versions); the first min_lag rows, which see nothing, are concatenated as
zeros. The FlexAttention path keeps length T instead (min_lag is random per training step in the
v2 long-term memory, and a new length would mean a new compiled kernel): rows that see nothing
attend to themselves inside the kernel and are zeroed after it, again so that no kernel meets a
fully masked row.

Paths:
- `kernel_regression_reference`: full (T x T) logits, boolean lag and document mask, masked
  softmax. The spec.
- plain (CPU, and any device without CUDA): unbounded window -> causal SDPA (flash kernel,
  O(T) memory); finite window -> query blocks of `_QUERY_BLOCK` rows against the whole blocks of
  keys they can reach (`_QUERY_BLOCK + window` rounded up to whole blocks), all blocks in one SDPA
  call with the band as an additive mask (cached per shape), so time and memory are
  O(T * window). With a document mask and a block that holds a document boundary, the banded
  path serves both, its window cut to the longest document of the batch (no query sees further
  back than its document's start): O(T * min(window, longest document)), linear in T for a given
  corpus, and no (T x T) mask. A block without a boundary takes the unmasked path, bit for bit.
- `kernel_regression_flex`: FlexAttention with a mask_mod built from the lags (and the document
  ids) and a block mask that skips blocks outside the band; compiled once and cached.
  `kernel_regression` uses it on CUDA. The lags enter the mask_mod as tensors, so changing them
  changes the block mask (cached per (T, lags), or per forward's `Documents` with a document mask)
  but does not recompile the kernel. FlexAttention has no dropout: with dropout_p > 0,
  `kernel_regression` takes the plain path on CUDA too.

Precision note, measured on CPU float32 with unit keys and q = beta * k against a float64 spec:
forward errors stay ~1e-6 at every beta; the q and k gradients degrade with beta for every float32
method (naive float32: 3e-5 at beta 1e3, 2e-3 at 3e4, 1e-2 at 65535), and the SDPA flash kernel,
which rebuilds probabilities from a float32 log-sum-exp, tracks naive float32 up to beta 3e4 but
loses them at 65535 (relative error ~1). Rows that peaked are near one-hot there, so the lost
gradients are tiny in absolute terms; the same holds for FlexAttention, which also stores an LSE.
The banded path (SDPA's fused kernel too, with the band as a mask) stays within 3x of naive
float32 in every gradient at beta 1e2..65535 (q, k: 2e-6 at beta 1e2, 3e-4 at 3e4, 1.6e-2 at
65535; v: 1e-6..1e-5); before it called SDPA it materialised the probabilities.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mosaics_lab.ops.documents import Documents, as_documents

__all__ = [
    "at_least_float32",
    "kernel_regression",
    "kernel_regression_flex",
    "kernel_regression_reference",
    "kernel_regression_weights",
]

# Query rows per block on the banded path. Measured on 2 CPU cores (T 2k..8k, window 254,
# fwd + bwd): 64 was best or within 5% of best; smaller blocks waste fewer masked logits but pay
# per-matmul overhead.
_QUERY_BLOCK = 64


def _check(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    min_lag: int,
    max_lag: int | None,
    dropout_p: float = 0.0,
) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"q, k, v must have shape (B, H, T, D), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape != k.shape or k.shape[:-1] != v.shape[:-1]:
        raise ValueError(
            f"q and k must have the same shape and v the same (B, H, T), got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if min_lag < 0:
        raise ValueError(f"min_lag must be >= 0 (a query cannot see the future), got {min_lag}")
    if max_lag is not None and max_lag < min_lag:
        raise ValueError(f"max_lag must be None or >= min_lag = {min_lag}, got {max_lag}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """t in float32, or as it is when it is already float32 or float64."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _documents(doc_ids: torch.Tensor | Documents | None, q: torch.Tensor) -> Documents | None:
    return None if doc_ids is None else as_documents(doc_ids, q.shape[0], q.shape[-2])


def _no_visible_pairs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # Exactly 0 yet connected to all inputs, so every input gets a zero gradient instead of None;
    # summing empty slices never touches the values, so an inf in an input cannot make a NaN.
    anchor = q[..., :0, :].sum() + k[..., :0, :].sum() + v[..., :0, :].sum()
    return torch.zeros_like(v) + anchor.to(v.dtype)


@functools.lru_cache(maxsize=32)
def _band_bias(N: int, W: int, S: int, window: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The band as an additive bias (0 or -inf) for N blocks of W queries against their S keys, the
    keys of block n starting at original position n W - (S - W): (N, W, S). Query row r of block n
    sees key column c iff 0 <= lag <= window, lag = r + (S - W) - c, and the key is not left padding.
    Cached: it depends on the shapes only (T, window), not on the data."""
    r = torch.arange(W, device=device).unsqueeze(-1)  # query row in the block
    c = torch.arange(S, device=device)  # key column in the span
    lag = r + (S - W) - c  # (W, S)
    band = (lag >= 0) & (lag <= window)
    real_key = (torch.arange(N, device=device).unsqueeze(-1) * W + c) >= S - W  # (N, S): not left pad
    visible = band & real_key.unsqueeze(-2)  # (N, W, S); the diagonal is always visible
    return torch.zeros((N, W, S), dtype=dtype, device=device).masked_fill_(~visible, float("-inf"))


def _spans(x: torch.Tensor, N: int, W: int, blocks_per_span: int) -> torch.Tensor:
    """(B, H, T, D) -> (B, N, H, S, D), S = blocks_per_span * W: block n's span is the
    blocks_per_span blocks of W steps that end with block n (left-padded with zeros). Built by
    concatenating shifted block views, whose backward is a few slice additions (instead of
    `unfold`'s backward, which a one-thread profile put high; BENCHMARKS.md has the op timings)."""
    B, H, T, D = x.shape
    lead = (blocks_per_span - 1) * W
    blocks = F.pad(x, (0, 0, lead, N * W - T)).view(B, H, N + blocks_per_span - 1, W, D).transpose(1, 2)
    return torch.cat([blocks[:, j : j + N] for j in range(blocks_per_span)], dim=-2)


def _banded_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    doc_q: torch.Tensor | None = None,
    doc_k: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Query t sees keys t - window .. t (and, with doc_q / doc_k (B, T), only keys of its own
    document); O(T * window). q, k, v: float32 (B, H, T, D)."""
    B, H, T, D = q.shape
    Dv = v.shape[-1]
    W = min(_QUERY_BLOCK, T)
    N = -(-T // W)
    # Blocks become the batch of one SDPA call: (B * N, H, W, D) queries against the (B * N, H, S, D)
    # keys of their spans, the band as an additive mask. A span is the whole blocks that reach back
    # `window` steps from its block's end, S = W ceil((W + window) / W), so that spans are made of
    # block views; the few columns beyond the window are masked like the rest.
    blocks_per_span = -(-(W + window) // W)
    S = blocks_per_span * W
    q_blocks = F.pad(q, (0, 0, 0, N * W - T)).view(B, H, N, W, D).transpose(1, 2).reshape(B * N, H, W, D)
    k_spans = _spans(k, N, W, blocks_per_span).reshape(B * N, H, S, D)
    v_spans = _spans(v, N, W, blocks_per_span).reshape(B * N, H, S, Dv)
    bias = _band_bias(N, W, S, window, q.device, q.dtype).unsqueeze(1)  # (N, 1, W, S)
    sees_pairs = None
    if doc_q is not None:
        # Same (B, N, W, S) layout as the band: the document of each query row and key column.
        d_q = F.pad(doc_q, (0, N * W - T)).view(B, N, W)
        d_k = F.pad(doc_k, (S - W, N * W - T)).unfold(1, S, W)  # (B, N, S)
        other = d_q.unsqueeze(-1) != d_k.unsqueeze(-2)  # (B, N, W, S)
        visible = (bias.squeeze(1) == 0) & ~other
        # The diagonal may now belong to another document: a row can see nothing. Such a row gets an
        # all-zero bias (no fully masked row reaches the kernel) and is zeroed below.
        sees_pairs = visible.any(-1, keepdim=True)  # (B, N, W, 1)
        visible = visible | ~sees_pairs
        bias = torch.zeros((B, N, 1, W, S), dtype=q.dtype, device=q.device)
        bias.masked_fill_(~visible.unsqueeze(2), float("-inf"))
        bias = bias.view(B * N, 1, W, S)
    elif B > 1:
        bias = bias.repeat(B, 1, 1, 1)  # (B * N, 1, W, S); SDPA's mask must match its batch
    # The mask as an additive bias: SDPA's fused CPU kernel never materialises the (W, S)
    # probabilities for the backward (it keeps the log-sum-exp), where matmul + softmax + matmul
    # kept the logits and the probabilities: same values to float32 rounding, less memory traffic.
    y = F.scaled_dot_product_attention(
        q_blocks, k_spans, v_spans, attn_mask=bias, dropout_p=dropout_p, scale=1.0
    )
    y = y.view(B, N, H, W, Dv).transpose(1, 2).reshape(B, H, N * W, Dv)[:, :, :T]
    if sees_pairs is not None:
        y = torch.where(sees_pairs.reshape(B, 1, N * W, 1)[:, :, :T], y, 0.0)
    return y


def _plain_kernel_regression(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    min_lag: int,
    max_lag: int | None,
    docs: Documents | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    B, H, T, Dv = v.shape
    dtype = v.dtype
    seen = T - min_lag  # number of queries (and of keys) left after the shift
    if seen <= 0:
        return _no_visible_pairs(q, k, v)
    # A window that reaches back past position 0 is the plain causal problem.
    window = None if max_lag is None or max_lag - min_lag >= seen - 1 else max_lag - min_lag
    doc_q = doc_k = None
    if docs is not None and docs.has_boundaries:
        # No query sees further back than its document's start: lags up to longest - 1.
        reach = docs.longest - 1 - min_lag
        if reach < 0:
            return _no_visible_pairs(q, k, v)
        window = reach if window is None else min(window, reach)
        doc_q, doc_k = docs.ids[:, min_lag:], docs.ids[:, :seen]
    # float32 logits for any lower precision: q . k can reach ~1e4..1e5 (q = beta * k).
    q, k, v = (at_least_float32(t) for t in (q[..., min_lag:, :], k[..., :seen, :], v[..., :seen, :]))
    if window is None:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0, dropout_p=dropout_p)
    else:
        y = _banded_attention(q, k, v, window, doc_q, doc_k, dropout_p)
    if min_lag:
        y = torch.cat([y.new_zeros(B, H, min_lag, Dv), y], dim=-2)
    return y.to(dtype)


def kernel_regression(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    min_lag: int = 1,
    max_lag: int | None = None,
    *,
    doc_ids: torch.Tensor | Documents | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """y_t = sum over min_lag <= t - i <= max_lag of softmax_i(q_t . k_i) v_i; (B, H, T, Dv).

    q, k: (B, H, T, D); v: (B, H, T, Dv). doc_ids: (B, T) integer document ids (or their
    `Documents`): query t sees only pairs of its own document. dropout_p: dropout on the softmax
    weights (training only: pass 0 in eval). CUDA inputs go through compiled FlexAttention
    (without dropout), others through the plain path (causal SDPA, or banded blocks for a finite
    window or a document mask). No path allocates a (T x T) buffer that lives into the backward:
    memory kept for backward is O(T * D) unbounded and O(T * window) windowed.
    """
    _check(q, k, v, min_lag, max_lag, dropout_p)
    docs = _documents(doc_ids, q)
    if q.is_cuda and not dropout_p:
        return _flex_kernel_regression(q, k, v, min_lag, max_lag, compiled=True, docs=docs)
    return _plain_kernel_regression(q, k, v, min_lag, max_lag, docs, dropout_p)


def _document_mask_mod(min_lag: torch.Tensor, max_lag: torch.Tensor | None, docs: Documents) -> Callable:
    ids, positions = docs.ids, docs.positions

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        lag = q_idx - kv_idx
        visible = (lag >= min_lag) & (ids[b, q_idx] == ids[b, kv_idx])
        if max_lag is not None:
            visible = visible & (lag <= max_lag)
        # As in _lag_mask_mod: a row that sees nothing (too close to its document's start) attends
        # to itself and is zeroed after the kernel.
        return visible | ((positions[b, q_idx] < min_lag) & (lag == 0))

    return mask_mod


def _document_block_mask(docs: Documents, min_lag: int, max_lag: int | None):
    """The block mask of this layout and these lags, built once per forward and shared by every
    layer's memory with the same lags (outside a compiled region, where the cache can be written)."""
    from torch.nn.attention.flex_attention import create_block_mask

    key = (min_lag, max_lag)
    if key in docs.block_masks:
        return docs.block_masks[key]
    B, T = docs.ids.shape
    device = docs.ids.device
    mask_mod = _document_mask_mod(
        torch.tensor(min_lag, device=device),
        None if max_lag is None else torch.tensor(max_lag, device=device),
        docs,
    )
    block_mask = create_block_mask(mask_mod, B=B, H=None, Q_LEN=T, KV_LEN=T, device=device)
    if not torch.compiler.is_compiling():
        docs.block_masks[key] = block_mask
    return block_mask


def _lag_mask_mod(min_lag: torch.Tensor, max_lag: torch.Tensor | None) -> Callable:
    def mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        lag = q_idx - kv_idx
        visible = lag >= min_lag
        if max_lag is not None:
            visible = visible & (lag <= max_lag)
        # Rows that see nothing (t < min_lag) attend to themselves; their output is zeroed after
        # the kernel. No row of the kernel is empty, so its fully-masked-row convention never applies.
        return visible | ((q_idx < min_lag) & (lag == 0))

    return mask_mod


@functools.lru_cache(maxsize=256)
def _lag_block_mask(T: int, min_lag: int, max_lag: int | None, device: torch.device):
    # Cached per (T, lags, device): create_block_mask evaluates the mask_mod on a transient (T x T)
    # boolean grid once, then keeps only the (T/128)^2 block table. 256 entries cover every v2
    # long-term delay in [64, 256] at one T.
    from torch.nn.attention.flex_attention import create_block_mask

    # Lags as tensors, not Python ints: a compiled kernel guards on the values of captured ints
    # (one recompile per lag) but only on the shape and dtype of captured tensors.
    mask_mod = _lag_mask_mod(
        torch.tensor(min_lag, device=device),
        None if max_lag is None else torch.tensor(max_lag, device=device),
    )
    return create_block_mask(mask_mod, B=None, H=None, Q_LEN=T, KV_LEN=T, device=device)


@functools.cache
def _compiled_flex_attention() -> Callable:
    # One compiled FlexAttention for the process: torch.compile caches kernels per shape.
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _flex_kernel_regression(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    min_lag: int,
    max_lag: int | None,
    compiled: bool,
    docs: Documents | None = None,
) -> torch.Tensor:
    from torch.nn.attention.flex_attention import flex_attention

    T = q.shape[-2]
    if min_lag >= T:
        return _no_visible_pairs(q, k, v)
    if docs is None:
        block_mask = _lag_block_mask(T, min_lag, max_lag, q.device)
    else:
        block_mask = _document_block_mask(docs, min_lag, max_lag)
    # Inside an enclosing torch.compile (dist.compile: true) call flex_attention itself: the enclosing
    # compile compiles it, while a nested torch.compile call would be a graph break at every memory.
    nested = compiled and not torch.compiler.is_compiling()
    attend = _compiled_flex_attention() if nested else flex_attention
    y = attend(q, k, v, block_mask=block_mask, scale=1.0)
    if min_lag:
        if docs is None:
            sees_pairs = (torch.arange(T, device=q.device) >= min_lag).unsqueeze(-1)  # (T, 1)
        else:
            sees_pairs = (docs.positions >= min_lag)[:, None, :, None]  # (B, 1, T, 1)
        # where, not a product: its backward sends exactly 0 into the self-attending rows.
        y = torch.where(sees_pairs, y, 0.0)
    return y


def kernel_regression_flex(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    min_lag: int = 1,
    max_lag: int | None = None,
    *,
    doc_ids: torch.Tensor | Documents | None = None,
    dropout_p: float = 0.0,
    compiled: bool = True,
) -> torch.Tensor:
    """`kernel_regression` through FlexAttention; same contract, (B, H, T, Dv).

    Meant for CUDA. On CPU this torch runs the forward (eager, or compiled with a slow first call)
    but has no backward, which is why the plain path serves CPU training. Logits accumulate in
    float32 inside the kernel; inputs and output keep their dtype. FlexAttention has no dropout:
    dropout_p > 0 is refused (`kernel_regression` routes it to the plain path).
    """
    _check(q, k, v, min_lag, max_lag, dropout_p)
    if dropout_p:
        raise ValueError(
            f"kernel_regression_flex has no dropout (got dropout_p={dropout_p}); call kernel_regression, "
            "which takes the plain path when dropout is asked"
        )
    return _flex_kernel_regression(q, k, v, min_lag, max_lag, compiled, _documents(doc_ids, q))


def kernel_regression_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    min_lag: int = 1,
    max_lag: int | None = None,
    *,
    doc_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """The spec of `kernel_regression` (without dropout): full (T x T) float32 logits, a lag and
    document mask, and a masked softmax."""
    _check(q, k, v, min_lag, max_lag)
    logits = q.float() @ k.float().transpose(-1, -2)  # (B, H, T, T)
    logits = logits.masked_fill(~_visible_pairs(q, min_lag, max_lag, doc_ids), float("-inf"))
    # Softmax by hand so that rows with nothing visible give 0, not NaN: their max is -inf.
    row_max = logits.detach().amax(-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, 0.0)
    p = torch.exp(logits - row_max)
    total = p.sum(-1, keepdim=True)
    y = (p @ v.float()) / torch.where(total > 0, total, 1.0)
    return y.to(v.dtype)


def _visible_pairs(
    q: torch.Tensor, min_lag: int, max_lag: int | None, doc_ids: torch.Tensor | Documents | None
) -> torch.Tensor:
    """[query t, pair i] visible: min_lag <= t - i <= max_lag, same document. (T, T) or (B, 1, T, T)."""
    T = q.shape[-2]
    t = torch.arange(T, device=q.device)
    lag = t.unsqueeze(-1) - t  # [query t, key i] = t - i
    visible = lag >= min_lag
    if max_lag is not None:
        visible &= lag <= max_lag
    if doc_ids is not None:
        ids = as_documents(doc_ids, q.shape[0], T).ids  # validates shape and dtype
        visible = visible & (ids.unsqueeze(-1) == ids.unsqueeze(-2)).unsqueeze(1)  # (B, 1, T, T)
    return visible


@torch.no_grad()
def kernel_regression_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    min_lag: int = 1,
    max_lag: int | None = None,
    *,
    doc_ids: torch.Tensor | Documents | None = None,
) -> torch.Tensor:
    """The retrieval weights softmax_i(q_t . k_i) over the visible pairs, (B, H, T, T) float32:
    row t sums to 1 over the pairs query t sees and is 0 elsewhere (an all-zero row when it sees
    none). For looking inside a memory, never for training: it materialises the (T x T) weights
    that the fast paths avoid, and carries no gradient. `kernel_regression` (without dropout)
    equals `weights @ v`."""
    _check(q, k, k, min_lag, max_lag)
    logits = at_least_float32(q) @ at_least_float32(k).transpose(-1, -2)  # (B, H, T, T)
    visible = _visible_pairs(q, min_lag, max_lag, doc_ids)
    logits = logits.masked_fill(~visible, float("-inf"))
    row_max = logits.amax(-1, keepdim=True)
    p = torch.exp(logits - torch.where(torch.isfinite(row_max), row_max, 0.0))
    total = p.sum(-1, keepdim=True)
    return (p / torch.where(total > 0, total, 1.0)).float()
