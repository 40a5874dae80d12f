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


# ---- document mask ----


def document_ids(B: int, T: int, cuts: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """doc_ids (B, T): row 0 cut at `cuts`, the other rows at shuffled cut points (rows differ)."""
    rows = []
    gen = torch.Generator().manual_seed(seed)
    for b in range(B):
        row_cuts = (
            cuts
            if b == 0
            else tuple(sorted(torch.randint(1, max(T, 2), (len(cuts),), generator=gen).tolist()))
        )
        t = torch.arange(T)
        rows.append(sum((t >= c).long() for c in row_cuts) if row_cuts else torch.zeros(T, dtype=torch.long))
    return torch.stack(rows)


def check_documents_against_reference(fn, q, k, v, min_lag, max_lag, doc_ids, tol: float) -> None:
    def run(f, grad_out=None):
        y = f(q, k, v, min_lag, max_lag, doc_ids=doc_ids)
        if grad_out is None:
            grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.dtype)
        return y, torch.autograd.grad(y, (q, k, v), grad_out), grad_out

    y_ref, grads_ref, grad_out = run(kernel_regression_reference)
    y, grads, _ = run(fn, grad_out)
    assert_close("y", y, y_ref, tol)
    for name, g, g_ref in zip(("dq", "dk", "dv"), grads, grads_ref):
        # Rows with one visible pair make dq, dk rounding noise; compare them by absolute size there.
        if name != "dv" and max_lag == min_lag:
            assert_negligible(name, g, g_ref)
        else:
            assert_close(name, g, g_ref, tol)


DOC_CUTS = [(1,), (5,), (64,), (30, 31, 100), (3, 130, 131)]


@pytest.mark.parametrize("min_lag,max_lag", LAGS)
@pytest.mark.parametrize("cuts", DOC_CUTS)
def test_document_mask_matches_reference_forward_and_every_gradient(cuts, min_lag, max_lag):
    T = 140
    q, k, v = make_qkv((2, 3, T, 8), torch.float32)
    check_documents_against_reference(
        kernel_regression, q, k, v, min_lag, max_lag, document_ids(2, T, cuts), FP32_TOL
    )


def test_document_mask_sees_only_the_own_document():
    # Changing document 1 changes nothing of document 2, which equals document 2 run alone.
    T, cut = 90, 37
    q, k, v = (t.detach() for t in make_qkv((1, 2, T, 8), torch.float32, beta=20.0))
    doc_ids = (torch.arange(T) >= cut).long().unsqueeze(0)
    for min_lag, max_lag in ((1, None), (3, None), (1, 20), (0, None)):
        y = kernel_regression(q, k, v, min_lag, max_lag, doc_ids=doc_ids)
        q2, k2, v2 = (t.clone() for t in (q, k, v))
        for t in (q2, k2, v2):
            t[:, :, :cut] = torch.randn_like(t[:, :, :cut])
        y2 = kernel_regression(q2, k2, v2, min_lag, max_lag, doc_ids=doc_ids)
        assert torch.equal(y[:, :, cut:], y2[:, :, cut:])
        alone = kernel_regression(q[:, :, cut:], k[:, :, cut:], v[:, :, cut:], min_lag, max_lag)
        torch.testing.assert_close(y[:, :, cut:], alone, rtol=1e-5, atol=1e-6)
        # The first min_lag positions of a document see nothing.
        assert (y[:, :, cut : cut + min_lag] == 0).all()


@pytest.mark.parametrize("min_lag,max_lag", [(1, None), (1, 5)])
def test_document_ids_without_a_boundary_give_exactly_the_unmasked_output(min_lag, max_lag):
    q, k, v = (t.detach() for t in make_qkv((2, 3, 100, 8), torch.float32))
    plain = kernel_regression(q, k, v, min_lag, max_lag)
    masked = kernel_regression(q, k, v, min_lag, max_lag, doc_ids=torch.full((2, 100), 3))
    assert torch.equal(plain, masked)


@pytest.mark.parametrize("min_lag,max_lag", [(0, None), (1, None), (3, None), (1, 5), (3, 63), (64, None)])
@pytest.mark.parametrize("T", [7, 65, 200])
@pytest.mark.parametrize("cuts", [(1,), (30, 31, 100), (5, 150)])
def test_flex_forward_matches_plain_path_with_document_mask_on_cpu(T, cuts, min_lag, max_lag):
    q, k, v = (t.detach() for t in make_qkv((2, 3, T, 16), torch.float32))
    doc_ids = document_ids(2, T, tuple(c for c in cuts if c < T))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        y = kernel_regression_flex(q, k, v, min_lag, max_lag, doc_ids=doc_ids, compiled=False)
    plain = kernel_regression(q, k, v, min_lag, max_lag, doc_ids=doc_ids)
    assert_close("y", y, plain, FP32_TOL)
    assert_close("y", y, kernel_regression_reference(q, k, v, min_lag, max_lag, doc_ids=doc_ids), FP32_TOL)


@pytest.mark.parametrize("min_lag,max_lag", [(1, None), (1, 63)])
def test_document_mask_memory_grows_linearly_in_T_for_fixed_document_length(min_lag, max_lag):
    sizes = {}
    for T in (1024, 4096):
        q, k, v = make_qkv((1, 2, T, 16), torch.float32)
        doc_ids = (torch.arange(T) // 100).unsqueeze(0)  # documents of 100 tokens
        sizes[T] = saved_bytes_of_forward(
            lambda *a, d=doc_ids: kernel_regression(*a, doc_ids=d), q, k, v, min_lag, max_lag
        )
    assert sizes[4096] < 4.5 * sizes[1024], sizes


@pytest.mark.parametrize(
    "doc_ids,message",
    [
        (torch.zeros(2, 9, dtype=torch.long), r"shape \(B, T\)"),
        (torch.zeros(2, 10), "integer"),
        (torch.zeros(10, dtype=torch.long), "shape"),
    ],
)
def test_document_ids_of_wrong_shape_or_dtype_raise_value_error(doc_ids, message):
    q, k, v = make_qkv((2, 1, 10, 4), torch.float32)
    with pytest.raises(ValueError, match=message):
        kernel_regression(q, k, v, doc_ids=doc_ids)


# ---- dropout on the attention weights ----


@pytest.mark.parametrize("min_lag,max_lag", [(1, None), (1, 5)])
def test_dropout_drops_attention_weights_not_outputs(min_lag, max_lag):
    # With v = 1 everywhere, a row's output is the sum of its kept weights / (1 - p): values other
    # than 0 and 1 / (1 - p) show that single weights were dropped (output dropout gives only those).
    p = 0.5
    q, k, _ = (t.detach() for t in make_qkv((2, 2, 64, 8), torch.float32))
    v = torch.ones(2, 2, 64, 8)
    torch.manual_seed(0)
    y = kernel_regression(q, k, v, min_lag, max_lag, dropout_p=p)[..., min_lag + 3 :, 0]
    mixed = ((y - 0).abs() > 1e-4) & ((y - 1 / (1 - p)).abs() > 1e-4)
    assert mixed.float().mean() > 0.5
    # Unbiased: the mean over many draws approaches the undropped output.
    q, k, v = (t.detach() for t in make_qkv((1, 2, 32, 8), torch.float32))
    exact = kernel_regression(q, k, v, min_lag, max_lag)
    mean = torch.stack(
        [kernel_regression(q, k, v, min_lag, max_lag, dropout_p=0.2) for _ in range(400)]
    ).mean(0)
    assert (mean - exact).norm() / exact.norm() < 0.05


def test_dropout_with_document_mask_keeps_empty_rows_zero():
    q, k, v = make_qkv((2, 2, 50, 8), torch.float32)
    doc_ids = (torch.arange(50) >= 20).long().expand(2, 50)
    y = kernel_regression(q, k, v, 1, None, doc_ids=doc_ids, dropout_p=0.3)
    assert (y[:, :, [0, 20]] == 0).all() and torch.isfinite(y).all()
    grads = torch.autograd.grad(y.sum(), (q, k, v))
    assert all(torch.isfinite(g).all() for g in grads)


def test_flex_refuses_dropout_with_a_clear_error():
    q, k, v = (t.detach() for t in make_qkv((1, 1, 8, 4), torch.float32))
    with pytest.raises(ValueError, match="no dropout"):
        kernel_regression_flex(q, k, v, dropout_p=0.1, compiled=False)
    with pytest.raises(ValueError, match="dropout_p"):
        kernel_regression(q, k, v, dropout_p=1.0)
