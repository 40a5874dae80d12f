"""gpu-check parts 1 and 2: the ops against their references, and each mosaic block compiled.

Shapes: B batch, H heads, T time steps, D head dimension, C width.

Part 1 (`check_ops`): on the device, in float32 and bfloat16, every fast op against its naive
reference on the same leaves, forward and every gradient, by relative error ||fast - ref|| / ||ref||
(a reference that is exactly 0 must be matched exactly): leaky_average in a moderate and an
extreme (+-60 gates, -1e-6..-30 decays) regime, its unit norm at gates of +-1000, and with a
document mask; kernel_regression causal, windowed, delayed, and each of them with a document mask.
On CUDA kernel_regression runs compiled FlexAttention with block masks built from the lags; on CPU
it runs the plain path, and FlexAttention (`kernel_regression_flex`, eager) is checked forward
only: it has no CPU backward. A case whose op does not take `doc_ids` yet is recorded as pending.

Part 2 (`check_blocks`): each mosaic block under `torch.compile(fullgraph=True)` (a graph break is
an error) against the eager block, forward and backward; mosaic_v2's block over five long-term
delays, the last three with recompilation forbidden.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from mosaics_lab.bench.gpu_common import CheckFailed, Context
from mosaics_lab.models import build_model, config_class

# Relative-error tolerances (tests/ops pins the same bf16 tolerance and 1e-5 / 1e-4 in float32 on
# smaller shapes; FlexAttention and longer rows accumulate in another order).
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
# Compiled vs eager block, float32: Inductor fuses and reorders reductions.
BLOCK_TOL = {"cpu": 1e-4, "cuda": 1e-3}
# | ||k_t|| - 1 | at gates of +-1000: float32 rounding, and bf16's 8-bit mantissa (ulp 2^-7 at 1).
NORM_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
PENDING_DOC_IDS = "pending: op has no doc_ids yet"
REFERENCE = "kernel_regression_reference"


def accepts(fn: Callable, keyword: str) -> bool:
    try:
        return keyword in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    diff = float((got.double() - want.double()).norm())
    ref = float(want.double().norm())
    if ref == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / ref


def document_ids(B: int, T: int, device: torch.device) -> torch.Tensor:
    """(B, T) int64: row b cut at its own points, including a first document shorter than the delays
    (rows that see nothing) and one boundary off any block size."""
    ids = torch.zeros(B, T, dtype=torch.int64)
    for b in range(B):
        for cut in (3 + 5 * b, T // 3 + 7 * b, (2 * T) // 3 + 1):
            if 0 < cut < T:
                ids[b, cut:] += 1
    return ids.to(device)


def _outputs_and_grads(
    fn: Callable[..., torch.Tensor], leaves: Sequence[torch.Tensor], grad_out: torch.Tensor | None
) -> tuple[list[torch.Tensor], torch.Tensor]:
    y = fn(*leaves)
    if grad_out is None:
        gen = torch.Generator().manual_seed(1)
        grad_out = torch.randn(y.shape, generator=gen).to(device=y.device, dtype=y.dtype)
    grads = torch.autograd.grad(y, list(leaves), grad_out, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)]
    return [y.detach(), *grads], grad_out


def _compare(
    ctx: Context,
    rows: list[dict],
    name: str,
    dtype: torch.dtype,
    path: str,
    reference: str,
    fast: Callable[..., torch.Tensor],
    ref: Callable[..., torch.Tensor],
    leaves: Sequence[torch.Tensor],
    names: Sequence[str],
    backward: bool = True,
) -> None:
    tol = TOL[dtype]
    if backward:
        want, grad_out = _outputs_and_grads(ref, leaves, None)
        got, _ = _outputs_and_grads(fast, leaves, grad_out)
        labels = ["y", *(f"d{n}" for n in names)]
    else:
        plain = [t.detach() for t in leaves]  # FlexAttention on CPU refuses inputs that need a gradient
        want, got = [ref(*plain)], [fast(*plain)]
        labels = ["y"]
    errors = {label: rel_err(g, w) for label, g, w in zip(labels, got, want)}
    finite = all(bool(torch.isfinite(g).all()) for g in got)
    worst = max(errors.values())
    row = {
        "check": name,
        "dtype": str(dtype).removeprefix("torch."),
        "path": path,
        "reference": reference,
        "compared": labels,
        "rel_err": {k: float(f"{v:.3e}") if math.isfinite(v) else str(v) for k, v in errors.items()},
        "max_rel_err": float(f"{worst:.3e}") if math.isfinite(worst) else str(worst),
        "tol": tol,
        "ok": finite and worst <= tol,
    }
    if not backward:
        row["backward"] = "skipped: FlexAttention has no CPU backward (checked on CUDA)"
    rows.append(row)
    ctx.log(f"  {name} {row['dtype']} [{path}]: max rel err {worst:.1e} (tol {tol:.0e})")
    if not row["ok"]:
        bad = {k: v for k, v in errors.items() if not v <= tol}
        raise CheckFailed(
            f"{name} ({row['dtype']}, {path}) disagrees with {reference}: relative errors {bad} > {tol}"
            + ("" if finite else "; non-finite values")
        )


def _pending(rows: list[dict], name: str, dtype: torch.dtype, path: str) -> None:
    rows.append(
        {"check": name, "dtype": str(dtype).removeprefix("torch."), "path": path, "pending": PENDING_DOC_IDS}
    )


def check_ops(ctx: Context) -> list[dict]:
    """Part 1; raises CheckFailed on the first disagreement (the rows so far are in ctx.rows)."""
    import mosaics_lab.ops as ops  # looked up at call time, so a test can swap an op for a wrong one

    B, H, T, D = ctx.budget.op_shape
    window, delay = ctx.budget.op_window, ctx.budget.op_delay
    device = ctx.device
    rows = ctx.rows
    docs = document_ids(B, T, device)
    gen = torch.Generator().manual_seed(0)
    draw = lambda *s: torch.randn(*s, generator=gen)
    unif = lambda *s: torch.rand(*s, generator=gen)
    on_cuda = device.type == "cuda"
    kr_path = (
        "flex (compiled FlexAttention, block masks from the lags)" if on_cuda else "plain (SDPA / banded)"
    )
    for dtype in (torch.float32, torch.bfloat16):
        leaf = lambda t, dtype=dtype: t.to(device=device, dtype=dtype).requires_grad_(True)
        la_names = ("x", "log_decay", "log_gate")
        regimes = {
            "moderate": (draw(B, H, T, D), -unif(B, H, T), draw(B, H, T)),
            "extreme gates (+-60) and decays (-1e-6..-30)": (
                draw(B, H, T, D),
                -30.0 * unif(B, H, T) ** 4,
                60.0 * (2 * unif(B, H, T) - 1),
            ),
        }
        for regime, tensors in regimes.items():
            leaves = [leaf(t) for t in tensors]
            _compare(
                ctx, rows, f"leaky_average {regime}", dtype, "chunked scan", "leaky_average_reference",
                lambda x, d, g: ops.leaky_average(x, d, g),
                lambda x, d, g: ops.leaky_average_reference(x, d, g),
                leaves, la_names,
            )  # fmt: skip
        # Gates of +-1000: exp() of them overflows any float, the running log-scale must not.
        x = draw(B, H, T, D).to(device=device, dtype=dtype)
        gate = 1000.0 * torch.sign(draw(B, H, T)).to(device=device, dtype=dtype)
        with torch.no_grad():
            k = ops.leaky_average(x, -unif(B, H, T).to(device=device, dtype=dtype), gate)
        norm_err = float((k.float().norm(dim=-1) - 1).abs().max())
        ok = math.isfinite(norm_err) and norm_err <= NORM_TOL[dtype]
        rows.append(
            {
                "check": "leaky_average gates +-1000: unit norm",
                "dtype": str(dtype).removeprefix("torch."),
                "path": "chunked scan",
                "reference": "norm of k_t = 1 (MODELS.md 0)",
                "max_abs_err": float(f"{norm_err:.3e}"),
                "tol": NORM_TOL[dtype],
                "ok": ok,
            }
        )
        if not ok:
            raise CheckFailed(f"leaky_average ({dtype}) at gates +-1000: max | ||k|| - 1 | = {norm_err:.2e}")
        name = "leaky_average document mask"
        if accepts(ops.leaky_average, "doc_ids") and accepts(ops.leaky_average_reference, "doc_ids"):
            leaves = [leaf(t) for t in regimes["moderate"]]
            _compare(
                ctx, rows, name, dtype, "chunked scan", "leaky_average_reference",
                lambda x, d, g: ops.leaky_average(x, d, g, doc_ids=docs),
                lambda x, d, g: ops.leaky_average_reference(x, d, g, doc_ids=docs),
                leaves, la_names,
            )  # fmt: skip
        else:
            _pending(rows, name, dtype, "chunked scan")

        # Logits of unit scale: q, k ~ N(0, 1 / sqrt(D)) per entry.
        qkv = [draw(B, H, T, D) / D**0.25 for _ in range(3)]
        cases = [
            ("causal", 1, None),
            (f"window 1..{window}", 1, window),
            (f"delay >= {delay}", delay, None),
        ]
        for masked in (False, True):
            for label, min_lag, max_lag in cases:
                name = f"kernel_regression {label}" + (" + document mask" if masked else "")
                kw = {"doc_ids": docs} if masked else {}
                takes_docs = all(
                    accepts(f, "doc_ids")
                    for f in (
                        ops.kernel_regression,
                        ops.kernel_regression_reference,
                        ops.kernel_regression_flex,
                    )
                )
                if masked and not takes_docs:
                    _pending(rows, name, dtype, kr_path)
                    continue
                ref = lambda q, k, v, a=min_lag, b=max_lag, kw=kw: ops.kernel_regression_reference(
                    q, k, v, a, b, **kw
                )
                leaves = [leaf(t) for t in qkv]
                _compare(
                    ctx, rows, name, dtype, kr_path, "kernel_regression_reference",
                    lambda q, k, v, a=min_lag, b=max_lag, kw=kw: ops.kernel_regression(q, k, v, a, b, **kw),
                    ref, leaves, ("q", "k", "v"),
                )  # fmt: skip
                if not on_cuda:
                    _compare(
                        ctx, rows, name, dtype, "flex (eager FlexAttention, CPU)", REFERENCE,
                        lambda q, k, v, a=min_lag, b=max_lag, kw=kw: ops.kernel_regression_flex(
                            q, k, v, a, b, compiled=False, **kw
                        ),
                        ref, leaves, ("q", "k", "v"), backward=False,
                    )  # fmt: skip
    return rows


def _tiny_block(arch: str, ctx: Context, **extra: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    C, H, T = ctx.budget.block_shape
    cfg = config_class(arch)(
        arch=arch, vocab_size=64, block_size=T, n_layer=1, n_head=H, n_embd=C, dropout=0.0, **extra
    )
    return build_model(cfg).blocks[0].to(ctx.device)


def _forward_backward(block: torch.nn.Module, x: torch.Tensor, **kwargs: Any) -> list[torch.Tensor]:
    block.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    y = block(x, **kwargs)
    y.backward(torch.linspace(-1, 1, y.numel(), device=y.device).view_as(y))
    return [y.detach(), x.grad] + [p.grad for p in block.parameters()]


def _compare_block(ctx: Context, name: str, got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    tol = BLOCK_TOL[ctx.device.type]
    errors = [rel_err(g, w) for g, w in zip(got, want)]
    worst = max(errors)
    ctx.rows.append(
        {
            "check": name,
            "backend": ctx.compile_backend,
            "reference": "the eager block",
            "compared": "output, input gradient, every parameter gradient",
            "max_rel_err": float(f"{worst:.3e}"),
            "tol": tol,
            "ok": worst <= tol,
        }
    )
    ctx.log(f"  {name}: max rel err {worst:.1e} (tol {tol:.0e})")
    if not worst <= tol:
        raise CheckFailed(
            f"{name}: compiled block differs from eager (max relative error {worst:.2e} > {tol})"
        )
    return worst


def check_blocks(ctx: Context) -> list[dict]:
    """Part 2; raises CheckFailed on a graph break, a recompilation or a numerical difference."""
    C, H, T = ctx.budget.block_shape
    backend = ctx.compile_backend
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, T, C, generator=gen).to(ctx.device)

    torch._dynamo.reset()
    block = _tiny_block("mosaic_v1", ctx)
    compiled = torch.compile(block, fullgraph=True, backend=backend)
    try:
        got = _forward_backward(compiled, x)
    except Exception as exc:  # a graph break under fullgraph=True, or a failed compilation
        raise CheckFailed(
            f"mosaic_v1 block does not compile as one graph: {type(exc).__name__}: {exc}"
        ) from exc
    _compare_block(ctx, "mosaic_v1 block, fullgraph", got, _forward_backward(block, x))

    torch._dynamo.reset()
    warm, checked = ctx.budget.block_delays
    block = _tiny_block(
        "mosaic_v2", ctx, stm_window=ctx.budget.block_stm_window, ltm_delay_train=[min(warm), max(checked)]
    )
    compiled = torch.compile(block, fullgraph=True, backend=backend)
    try:
        # The first new delay turns m into a dynamic int (one recompilation); later ones reuse it.
        for delay in warm:
            _forward_backward(compiled, x, ltm_delay=delay)
        with torch._dynamo.config.patch(error_on_recompile=True):
            for delay in checked:
                got = _forward_backward(compiled, x, ltm_delay=delay)
                _compare_block(
                    ctx,
                    f"mosaic_v2 block, fullgraph, ltm delay {delay}",
                    got,
                    _forward_backward(block, x, ltm_delay=delay),
                )
    except CheckFailed:
        raise
    except Exception as exc:
        raise CheckFailed(
            f"mosaic_v2 block: {type(exc).__name__}: {exc} (a graph break, or a recompilation "
            "for a new delay)"
        ) from exc
    ctx.rows.append(
        {
            "check": "mosaic_v2 block: no recompilation",
            "backend": backend,
            "delays_warm_up": list(warm),
            "delays_checked": list(checked),
            "ok": True,
        }
    )
    return ctx.rows
