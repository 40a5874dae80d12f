"""kernel_regression (shifted SDPA / banded blocks / FlexAttention) against its naive spec, fla style.

Shapes: B batch, H heads, T time steps, D head dimension.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from mosaics_lab.ops import kernel_regression, kernel_regression_flex, kernel_regression_reference
from tests.ops.compare import assert_close

# Relative error ||fast - ref|| / ||ref|| allowed. float32 measures ~1e-7..5e-7 at unit-scale
# logits; bfloat16 is dominated by the rounding of outputs and gradients to 8 mantissa bits.
FP32_TOL = 1e-5
BF16_TOL = 2e-2
# q = 1e3 * unit keys: the q and k gradients of two float32 methods differ by ~3e-5 (each is
# ~3e-5 from float64), since near-one-hot rows make those gradients differences of close numbers.
LARGE_LOGIT_TOL = 3e-4
# Bound on the entries of a gradient that is 0 in exact arithmetic (q and k when a row sees a
# single pair: its softmax is 1 whatever the logit), which the reference fills with rounding noise
# (~1e-5 at D = 32, where the same gradients with two visible pairs are ~10).
NEGLIGIBLE = 1e-4

TOLERANCE = {torch.float32: FP32_TOL, torch.bfloat16: BF16_TOL}

# (min_lag, max_lag): full memory with and without the current pair, a delayed long-term memory,
# a single lag, and short-term windows shorter than, equal to and longer than some of the T below.
LAGS = [(0, None), (1, None), (3, None), (0, 0), (1, 5), (3, 63), (1, 255)]
LENGTHS = [1, 7, 63, 64, 65, 200]
# (B, H, D) cycled so that every B, H and D value appears without a full product.
BHD = [(2, 1, 1), (1, 3, 5), (2, 3, 32)]


def assert_negligible(name: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    assert actual.abs().max() <= NEGLIGIBLE and expected.abs().max() <= NEGLIGIBLE, name


def make_qkv(
    shape: tuple[int, int, int, int], dtype: torch.dtype, beta: float | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Leaf q, k, v of shape (B, H, T, D). With beta: unit keys and q = beta * k, as in a mosaic."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(*shape, generator=gen) for _ in range(3))
    if beta is not None:
        k = k / k.norm(dim=-1, keepdim=True)
        q = beta * k
    return tuple(t.to(dtype).requires_grad_(True) for t in (q, k, v))


def outputs_and_grads(fn, q, k, v, min_lag, max_lag, grad_out: torch.Tensor | None = None):
    y = fn(q, k, v, min_lag, max_lag)
    if grad_out is None:
        grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.dtype)
    grads = torch.autograd.grad(y, (q, k, v), grad_out)
    return y, grads, grad_out


def single_pair_rows_only(T: int, min_lag: int, max_lag: int | None) -> bool:
    """Every row sees at most one pair, so the q and k gradients are 0 in exact arithmetic."""
    return max_lag == min_lag or T - min_lag <= 1


def check_against_reference(fn, q, k, v, min_lag, max_lag, tol: float) -> None:
    y_ref, grads_ref, grad_out = outputs_and_grads(kernel_regression_reference, q, k, v, min_lag, max_lag)
    y, grads, _ = outputs_and_grads(fn, q, k, v, min_lag, max_lag, grad_out)
    assert_close("y", y, y_ref, tol)
    for name, g, g_ref in zip(("dq", "dk", "dv"), grads, grads_ref):
        if name != "dv" and single_pair_rows_only(q.shape[-2], min_lag, max_lag):
            assert_negligible(name, g, g_ref)
        else:
            assert_close(name, g, g_ref, tol)


@pytest.mark.parametrize("B,H,D", BHD)
@pytest.mark.parametrize("min_lag,max_lag", LAGS)
@pytest.mark.parametrize("T", LENGTHS)
def test_fast_matches_reference_forward_and_every_gradient_fp32(T, min_lag, max_lag, B, H, D):
    q, k, v = make_qkv((B, H, T, D), torch.float32)
    check_against_reference(kernel_regression, q, k, v, min_lag, max_lag, FP32_TOL)


@pytest.mark.parametrize("min_lag,max_lag", LAGS)
@pytest.mark.parametrize("T", [7, 65, 200])
def test_fast_matches_reference_forward_and_every_gradient_bf16(T, min_lag, max_lag):
    q, k, v = make_qkv((2, 3, T, 32), torch.bfloat16)
    check_against_reference(kernel_regression, q, k, v, min_lag, max_lag, BF16_TOL)


@pytest.mark.parametrize("min_lag,max_lag", [(1, None), (3, None), (1, 63), (1, 5), (3, 5)])
@pytest.mark.parametrize("T", [65, 200])
def test_fast_matches_reference_with_large_logits(T, min_lag, max_lag):
    q, k, v = make_qkv((2, 3, T, 32), torch.float32, beta=1e3)
    check_against_reference(kernel_regression, q, k, v, min_lag, max_lag, LARGE_LOGIT_TOL)


@pytest.mark.parametrize("fn", [kernel_regression, kernel_regression_reference], ids=["fast", "reference"])
@pytest.mark.parametrize("min_lag,max_lag", [(3, None), (3, 5), (3, 3)])
@pytest.mark.parametrize("T", [2, 3, 10])
def test_rows_without_visible_pairs_are_exactly_zero_with_finite_gradients(fn, T, min_lag, max_lag):
    # Large logits too: a masked softmax that leaks a -inf or an overflow into an empty row shows here.
    q, k, v = make_qkv((2, 3, T, 8), torch.float32, beta=1e4)
    y, grads, _ = outputs_and_grads(fn, q, k, v, min_lag, max_lag)
    assert (y[..., :min_lag, :] == 0).all()
    assert torch.isfinite(y).all()
    for g in grads:
        assert g is not None and torch.isfinite(g).all()
    # Rows that see nothing pass no gradient to their query.
    assert (grads[0][..., :min_lag, :] == 0).all()


def test_sequence_shorter_than_min_lag_gives_zeros_connected_to_every_input():
    q, k, v = make_qkv((1, 2, 3, 4), torch.float32)
    y, grads, _ = outputs_and_grads(kernel_regression, q, k, v, 5, None)
    assert (y == 0).all()
    assert all(g is not None and (g == 0).all() for g in grads)


@pytest.mark.parametrize("min_lag,max_lag", [(0, None), (1, None), (3, 5), (1, 63), (1, 255)])
@pytest.mark.parametrize("T", [2, 7, 65, 200])
def test_flex_forward_matches_reference_on_cpu(T, min_lag, max_lag):
    # FlexAttention has no backward on CPU in this torch, and compiling it on CPU takes ~15 s per
    # shape, so the CPU check is the eager forward; CUDA runs the compiled kernel with gradients.
    q, k, v = (t.detach() for t in make_qkv((2, 3, T, 16), torch.float32))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        y = kernel_regression_flex(q, k, v, min_lag, max_lag, compiled=False)
    assert_close("y", y, kernel_regression_reference(q, k, v, min_lag, max_lag), FP32_TOL)


def saved_bytes_of_forward(fn, *args) -> int:
    """Bytes of the distinct storages autograd keeps for backward, plus the output."""
    storages = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    storages[out.untyped_storage().data_ptr()] = out.untyped_storage().nbytes()
    return sum(storages.values())


@pytest.mark.parametrize("min_lag,max_lag", [(1, None), (1, 63)])
def test_memory_saved_for_backward_grows_linearly_in_T(min_lag, max_lag):
    sizes = {}
    for T in (1024, 4096):
        q, k, v = make_qkv((1, 2, T, 16), torch.float32)
        sizes[T] = saved_bytes_of_forward(kernel_regression, q, k, v, min_lag, max_lag)
    # Linear: x4 in T gives x4 in memory; a (T x T) buffer would give x16.
    assert sizes[4096] < 4.5 * sizes[1024], sizes


@pytest.mark.parametrize(
    "min_lag,max_lag,message", [(-1, None, "min_lag"), (3, 2, "max_lag"), (1, 0, "max_lag")]
)
def test_impossible_lags_raise_value_error(min_lag, max_lag, message):
    q, k, v = make_qkv((1, 1, 8, 4), torch.float32)
    with pytest.raises(ValueError, match=message):
        kernel_regression(q, k, v, min_lag, max_lag)


def test_mismatched_shapes_raise_value_error():
    q, k, v = make_qkv((1, 1, 8, 4), torch.float32)
    with pytest.raises(ValueError, match="same"):
        kernel_regression(q, k[..., :7, :], v)


@pytest.mark.slow
@pytest.mark.parametrize("min_lag,max_lag", [(1, None), (1, 63)])
def test_plain_path_compiles_with_fullgraph(min_lag, max_lag):
    q, k, v = make_qkv((1, 2, 200, 16), torch.float32)
    compiled = torch.compile(kernel_regression, fullgraph=True, dynamic=False)
    check_against_reference(compiled, q, k, v, min_lag, max_lag, FP32_TOL)


@pytest.mark.slow
def test_compiled_flex_serves_every_min_lag_with_one_kernel():
    # v2 draws the long-term delay min_lag per training step; a recompile per value would stall
    # training (and hit dynamo's recompile limit). Forward only: FlexAttention has no CPU backward.
    q, k, v = (t.detach() for t in make_qkv((1, 2, 300, 16), torch.float32))
    for i, min_lag in enumerate((64, 100, 3)):
        with torch._dynamo.config.patch(error_on_recompile=i > 0):
            y = kernel_regression_flex(q, k, v, min_lag, None, compiled=True)
        assert_close("y", y, kernel_regression_reference(q, k, v, min_lag, None), FP32_TOL)
        assert (y[..., :min_lag, :] == 0).all()
