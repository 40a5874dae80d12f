"""Speed and memory of the two ops against their naive references (and plain causal SDPA).

Shapes: B batch, H heads, T time steps, D head dimension; one (B, H, D) for every row, T varies.

Each row times forward + backward (`y.sum().backward()`), best of `repeats` after one warm-up call,
on `device` (CPU by default; CUDA is synchronised around each call) with torch's thread count.

Memory ("peak_mib"): torch has no allocator statistics on CPU, so the figure is the bytes autograd
keeps between forward and backward plus the output, measured with
`torch.autograd.graph.saved_tensors_hooks`: every tensor saved for backward is recorded by its
storage (counted once, whole storage, so views of one buffer count once). This is what grows with
T during training; transient buffers freed inside the forward (e.g. SDPA's per-block scratch) are
not included. A (T x T) buffer shows up as quadratic growth, an O(T) op as linear growth.

The naive references build (T x T) tensors (leaky_average_reference in float64), so they run
only up to `REFERENCE_MAX_T`; longer rows are returned with `skipped` set and no numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from mosaics_lab.analysis.tables import markdown_table
from mosaics_lab.ops import (
    kernel_regression,
    kernel_regression_reference,
    leaky_average,
    leaky_average_reference,
)

__all__ = ["bench_ops", "format_table"]

BATCH, HEADS, HEAD_DIM = 1, 4, 64
# Above this the references need GiBs ((T x T) per batch and head, several times over).
REFERENCE_MAX_T = 4096
# The v2 short-term memory: query t sees t - 255 .. t - 1 (stm_window h = 256).
WINDOW_MIN_LAG, WINDOW_MAX_LAG = 1, 255

_MIB = 2**20


def _saved_mib(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    storages[out.untyped_storage().data_ptr()] = out.untyped_storage().nbytes()
    return out, sum(storages.values()) / _MIB


def _sync(t: torch.Tensor) -> None:
    if t.is_cuda:
        torch.cuda.synchronize(t.device)


def _measure(
    fn: Callable[[], torch.Tensor], leaves: Sequence[torch.Tensor], repeats: int
) -> tuple[float, float]:
    """(best ms for forward + backward, MiB saved for backward + output)."""
    times = []
    peak_mib = 0.0
    for i in range(repeats + 1):  # the first call warms up caches and the allocator
        for t in leaves:
            t.grad = None
        _sync(leaves[0])
        start = time.perf_counter()
        out, peak_mib = _saved_mib(fn) if i == 0 else (fn(), peak_mib)
        out.sum().backward()
        _sync(leaves[0])
        if i:
            times.append((time.perf_counter() - start) * 1e3)
    return min(times), peak_mib


def _row(op: str, impl: str, T: int, ms: float | None, peak_mib: float | None, skipped: str = "") -> dict:
    return {
        "op": op,
        "impl": impl,
        "T": T,
        "B": BATCH,
        "H": HEADS,
        "D": HEAD_DIM,
        "ms_fwd_bwd": None if ms is None else round(ms, 2),
        "peak_mib": None if peak_mib is None else round(peak_mib, 2),
        "skipped": skipped,
    }


def _leaf(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    # Drawn on the CPU generator (the same numbers on every device), then moved.
    return t.to(device).requires_grad_(True)


def _bench_leaky_average(T: int, repeats: int, gen: torch.Generator, device: torch.device) -> list[dict]:
    x = _leaf(torch.randn(BATCH, HEADS, T, HEAD_DIM, generator=gen), device)
    log_decay = _leaf(-torch.rand(BATCH, HEADS, T, generator=gen), device)
    log_gate = _leaf(torch.randn(BATCH, HEADS, T, generator=gen), device)
    leaves = (x, log_decay, log_gate)
    rows = []
    for impl, fn in (("fast", leaky_average), ("reference", leaky_average_reference)):
        if impl == "reference" and T > REFERENCE_MAX_T:
            rows.append(_row("leaky_average", impl, T, None, None, f"T > {REFERENCE_MAX_T}"))
            continue
        ms, mib = _measure(lambda fn=fn: fn(x, log_decay, log_gate), leaves, repeats)
        rows.append(_row("leaky_average", impl, T, ms, mib))
    return rows


def _bench_kernel_regression(T: int, repeats: int, gen: torch.Generator, device: torch.device) -> list[dict]:
    q, k, v = (_leaf(torch.randn(BATCH, HEADS, T, HEAD_DIM, generator=gen), device) for _ in range(3))
    leaves = (q, k, v)
    cases: list[tuple[str, str, Callable[[], torch.Tensor]]] = [
        ("kernel_regression_causal", "fast", lambda: kernel_regression(q, k, v, 1)),
        ("kernel_regression_causal", "reference", lambda: kernel_regression_reference(q, k, v, 1)),
        (
            "kernel_regression_causal",
            "sdpa",
            lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0),
        ),
        (
            f"kernel_regression_window{WINDOW_MAX_LAG}",
            "fast",
            lambda: kernel_regression(q, k, v, WINDOW_MIN_LAG, WINDOW_MAX_LAG),
        ),
        (
            f"kernel_regression_window{WINDOW_MAX_LAG}",
            "reference",
            lambda: kernel_regression_reference(q, k, v, WINDOW_MIN_LAG, WINDOW_MAX_LAG),
        ),
    ]
    rows = []
    for op, impl, fn in cases:
        if impl == "reference" and T > REFERENCE_MAX_T:
            rows.append(_row(op, impl, T, None, None, f"T > {REFERENCE_MAX_T}"))
            continue
        ms, mib = _measure(fn, leaves, repeats)
        rows.append(_row(op, impl, T, ms, mib))
    return rows


def bench_ops(
    lengths: Sequence[int] = (512, 2048, 8192),
    repeats: int = 3,
    quick: bool = False,
    device: torch.device | str = "cpu",
) -> list[dict]:
    """Rows {op, impl, T, B, H, D, ms_fwd_bwd, peak_mib, skipped} for every op, impl and T.

    quick: one repeat and lengths capped at 1024, for a smoke run in seconds.
    """
    device = torch.device(device)
    if quick:
        lengths = sorted({min(T, 1024) for T in lengths})
        repeats = 1
    gen = torch.Generator().manual_seed(0)
    rows = []
    for T in lengths:
        rows += _bench_leaky_average(T, repeats, gen, device)
        rows += _bench_kernel_regression(T, repeats, gen, device)
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """Markdown table of `bench_ops` rows, with each row's speed-up over the reference (same op, T)."""
    reference_ms = {(r["op"], r["T"]): r["ms_fwd_bwd"] for r in rows if r["impl"] == "reference"}
    table = []
    for r in rows:
        if r["skipped"]:
            ms = mib = f"skipped ({r['skipped']})"
            speedup = None
        else:
            ms, mib = f"{r['ms_fwd_bwd']:.2f}", f"{r['peak_mib']:.2f}"
            ref = reference_ms.get((r["op"], r["T"]))
            speedup = f"{ref / r['ms_fwd_bwd']:.1f}x" if ref and r["impl"] != "reference" else None
        table.append(
            {
                "op": r["op"],
                "impl": r["impl"],
                "T": r["T"],
                "B": r["B"],
                "H": r["H"],
                "D": r["D"],
                "ms fwd+bwd": ms,
                "saved MiB": mib,
                "speed-up vs reference": speedup,
            }
        )
    return markdown_table(table)
