"""`dist.compile`: every block of the memory mosaics compiles as one graph (fullgraph=True, no graph
break) in the training path, forward and backward, and gives the eager numbers; mosaic_v2's
per-step random long-term delay costs one recompile (to a dynamic int), not one per value; the CUDA
kernel-regression path (FlexAttention with a block mask built from the lags) captures as one graph
too. The ops alone are compiled with fullgraph=True in tests/ops.

Inductor on CPU is slow to compile (tens of seconds per graph), hence slow.
"""

from __future__ import annotations

import lightning  # noqa: F401  - as in training: importing Lightning wraps torch.compile
import pytest
import torch

from mosaics_lab.models import build_model, config_class

pytestmark = [pytest.mark.slow]

# float32 on CPU; compiled kernels fuse and reorder reductions, hence a tolerance above rounding.
REL_TOL = 1e-4


def tiny(arch: str, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = config_class(arch)(
        arch=arch, vocab_size=50, block_size=96, n_layer=1, n_head=2, n_embd=32, dropout=0.0, **extra
    )
    return build_model(cfg)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def forward_backward(block: torch.nn.Module, x: torch.Tensor, *args) -> list[torch.Tensor]:
    block.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    y = block(x, *args)
    y.backward(torch.linspace(-1, 1, y.numel()).view_as(y))
    return [y.detach(), x.grad] + [p.grad for p in block.parameters()]


def assert_compiled_matches_eager(block: torch.nn.Module, x: torch.Tensor, *args) -> None:
    eager = forward_backward(block, x, *args)
    compiled = forward_backward(torch.compile(block, fullgraph=True), x, *args)
    for i, (c, e) in enumerate(zip(compiled, eager)):
        assert rel_err(c, e) < REL_TOL, f"tensor {i} (0: output, 1: input grad, then parameter grads)"


def test_mosaic_v1_block_compiles_as_one_graph():
    torch._dynamo.reset()
    block = tiny("mosaic_v1").blocks[0]  # leaky-average keys, kernel regression, persistent memory
    assert_compiled_matches_eager(block, torch.randn(2, 96, 32))


def test_mosaic_v2_block_compiles_as_one_graph_and_the_random_delay_does_not_recompile_per_value():
    torch._dynamo.reset()
    block = tiny("mosaic_v2", stm_window=16, ltm_delay_train=[4, 24]).blocks[0]
    x = torch.randn(2, 96, 32)
    compiled = torch.compile(block, fullgraph=True)
    # The first new delay turns m into a dynamic int (one recompile); later values reuse that graph.
    for delay in (4, 9):
        forward_backward(compiled, x, None, delay)  # (x, docs, ltm_delay)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for delay in (13, 24, 5):
            got = forward_backward(compiled, x, None, delay)  # (x, docs, ltm_delay)
            want = forward_backward(block, x, None, delay)
            for i, (c, e) in enumerate(zip(got, want)):
                assert rel_err(c, e) < REL_TOL, f"delay {delay}, tensor {i}"


def test_checkpointed_then_compiled_block_matches_eager():
    # configure_model's order: activation checkpointing wraps the block, compile wraps that.
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    torch._dynamo.reset()
    block = tiny("mosaic_v2", stm_window=16, ltm_delay_train=[8]).blocks[0]
    wrapped = checkpoint_wrapper(block, preserve_rng_state=True)
    assert_compiled_matches_eager(wrapped, torch.randn(2, 96, 32), None, 8)


@pytest.mark.parametrize("min_lag, max_lag", [(1, 15), (8, None)])
def test_cuda_kernel_regression_path_captures_as_one_graph(min_lag, max_lag):
    # What kernel_regression runs for CUDA inputs, traced on CPU: dynamo must capture the block-mask
    # construction and FlexAttention without a break. backend="eager" runs the captured graph with
    # eager kernels (Inductor has no float32 FlexAttention lowering on CPU), forward only
    # (FlexAttention has no backward on CPU).
    from mosaics_lab.ops import kernel_regression_reference
    from mosaics_lab.ops.kernel_regression import _flex_kernel_regression

    torch._dynamo.reset()
    q, k, v = (torch.randn(1, 2, 200, 16) for _ in range(3))
    compiled = torch.compile(
        lambda q, k, v: _flex_kernel_regression(q, k, v, min_lag, max_lag, compiled=True),
        fullgraph=True,
        backend="eager",
    )
    y = compiled(q, k, v)  # dynamo warns that it traces through the block-mask lru_cache: intended
    assert rel_err(y, kernel_regression_reference(q, k, v, min_lag, max_lag)) < REL_TOL
