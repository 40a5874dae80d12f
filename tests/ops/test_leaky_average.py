"""leaky_average (chunked, O(T)) against leaky_average_reference (full T x T in float64), fla style.

Shapes: B batch, H heads, T time steps, D head dimension.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from mosaics_lab.ops import leaky_average, leaky_average_reference
from tests.ops.compare import assert_close

# Relative error ||fast - ref|| / ||ref|| allowed, per dtype of the inputs. float32 measures
# ~1e-7..1e-5 (the worst: decays of -1e-6 next to gates of +-60); bfloat16 is dominated by the
# final rounding of outputs and gradients to 8 mantissa bits.
FP32_TOL = 1e-4
BF16_TOL = 2e-2
# Bound on the entries of a gradient that is 0 up to eps-sized terms, where a relative error
# would only compare rounding noise: every gradient at D = 1 (k = sign(kbar) up to eps) and the
# log_gate gradient at T = 1 (the normalisation removes the gate). Their size is
# eps / ||kbar||^2 <= 1e-6 / 0.025^2 with the inputs below.
NEGLIGIBLE = 1e-2

TOLERANCE = {torch.float32: FP32_TOL, torch.bfloat16: BF16_TOL}


def assert_negligible(name: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    assert actual.abs().max() <= NEGLIGIBLE and expected.abs().max() <= NEGLIGIBLE, name


def make_inputs(
    shape: tuple[int, int, int, int],
    dtype: torch.dtype,
    regime: str,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """x (B, H, T, D), log_decay, log_gate (or None) for a named regime, all leaf tensors."""
    B, H, T, D = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, H, T, D, generator=gen)
    if D == 1:
        # Keeps kbar away from 0, where k = sign(kbar) has its kink.
        x = x.abs() + 0.5
    rand = lambda *s: torch.rand(*s, generator=gen)
    randn = lambda *s: torch.randn(*s, generator=gen)
    log_gate: torch.Tensor | None
    if regime == "moderate":
        log_decay, log_gate = -rand(B, H, T), randn(B, H, T)
    elif regime == "decay_near_zero":  # remembers everything: tests long sums within and across chunks
        log_decay, log_gate = torch.full((B, H, T), -1e-6), randn(B, H, T)
    elif regime == "decay_strong":  # forgets at once: weights of exp(-30 * lag) underflow
        log_decay, log_gate = torch.full((B, H, T), -30.0), randn(B, H, T)
    elif regime == "gate_plus_60":
        log_decay, log_gate = -rand(B, H, T), 60.0 + randn(B, H, T)
    elif regime == "gate_minus_60":  # kbar ~ e^-60 << eps: k is tiny, not unit norm
        log_decay, log_gate = -rand(B, H, T), -60.0 + randn(B, H, T)
    elif regime == "gates_and_decays_mixed":  # +-60 gates and -1e-6..-30 decays side by side
        log_decay = -30.0 * rand(B, H, T) ** 4
        log_gate = 60.0 * (2 * rand(B, H, T) - 1)
    elif regime == "gate_none":
        log_decay, log_gate = -rand(B, H, T), None
    elif regime == "decay_per_head_broadcast":  # v1: one constant decay per head, shape (1, H, 1)
        log_decay, log_gate = -3.0 * rand(1, H, 1), None
    # The constant-decay fast form (one decay per head, no gate) at its extremes.
    elif regime == "constant_decay_strong":
        log_decay, log_gate = -30.0 - rand(1, H, 1), None
    elif regime == "constant_decay_near_zero":
        log_decay, log_gate = torch.full((H, 1), -1e-6), None
    elif regime == "constant_growth":  # not a decay, but computed correctly: the oldest step weighs most
        log_decay, log_gate = 0.5 * rand(H, 1), None
    elif regime == "constant_decay_one_for_all_heads":
        log_decay, log_gate = torch.tensor([-0.7]), None
    else:
        raise AssertionError(regime)
    leaves = [x.to(dtype), log_decay.to(dtype), None if log_gate is None else log_gate.to(dtype)]
    return tuple(None if t is None else t.requires_grad_(True) for t in leaves)


def outputs_and_grads(fn, x, log_decay, log_gate, grad_out: torch.Tensor | None = None, **kwargs):
    k = fn(x, log_decay, log_gate, **kwargs)
    if grad_out is None:
        grad_out = torch.randn(k.shape, generator=torch.Generator().manual_seed(1)).to(k.dtype)
    inputs = [t for t in (x, log_decay, log_gate) if t is not None]
    grads = torch.autograd.grad(k, inputs, grad_out)
    return k, grads, grad_out


def eps_level_gradients(regime: str, T: int, D: int) -> set[str]:
    """Gradients that are 0 up to eps-sized terms for these inputs (see NEGLIGIBLE)."""
    if D == 1:
        return {"dx", "dlog_decay", "dlog_gate"}
    if regime in ("decay_strong", "constant_decay_strong"):  # kbar_t = e^G_t x_t (1 + O(e^-30))
        return {"dlog_decay", "dlog_gate"}
    return {"dlog_gate"} if T == 1 else set()


def check_fast_against_reference(x, log_decay, log_gate, tol: float, regime: str, **kwargs) -> None:
    k_ref, grads_ref, grad_out = outputs_and_grads(leaky_average_reference, x, log_decay, log_gate)
    k, grads, _ = outputs_and_grads(leaky_average, x, log_decay, log_gate, grad_out, **kwargs)
    assert_close("k", k, k_ref, tol)
    for name, g, g_ref in zip(("dx", "dlog_decay", "dlog_gate"), grads, grads_ref):
        if name in eps_level_gradients(regime, x.shape[-2], x.shape[-1]):
            assert_negligible(name, g, g_ref)
        else:
            assert_close(name, g, g_ref, tol)


# (B, H) pairs cycled over D so that every B, H and D value appears without a full product.
BHD = [(1, 1, 1), (2, 3, 5), (2, 1, 32)]
LENGTHS = [1, 7, 63, 64, 65, 200]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("B,H,D", BHD)
@pytest.mark.parametrize("T", LENGTHS)
def test_fast_matches_reference_forward_and_every_gradient(T, B, H, D, dtype):
    x, log_decay, log_gate = make_inputs((B, H, T, D), dtype, "moderate")
    check_fast_against_reference(x, log_decay, log_gate, TOLERANCE[dtype], "moderate")


REGIMES = [
    "decay_near_zero",
    "decay_strong",
    "gate_plus_60",
    "gate_minus_60",
    "gates_and_decays_mixed",
    "gate_none",
    "decay_per_head_broadcast",
    "constant_decay_strong",
    "constant_decay_near_zero",
    "constant_growth",
    "constant_decay_one_for_all_heads",
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("T", [1, 65, 200])
def test_fast_matches_reference_under_extreme_gates_and_decays(T, regime, dtype):
    x, log_decay, log_gate = make_inputs((2, 3, T, 5), dtype, regime)
    check_fast_against_reference(x, log_decay, log_gate, TOLERANCE[dtype], regime)


@pytest.mark.parametrize("chunk_size", [2, 3, 8, 200, 512])
@pytest.mark.parametrize(
    "regime", ["moderate", "gates_and_decays_mixed", "decay_per_head_broadcast", "constant_growth"]
)
def test_result_does_not_depend_on_chunk_size(chunk_size, regime):
    # T = 200 with chunk 3 recurses through chunk-end states four levels deep (200 -> 67 -> 23 -> 8
    # -> 3); chunk 200 and 512 take the single-chunk path.
    x, log_decay, log_gate = make_inputs((1, 2, 200, 4), torch.float32, regime)
    check_fast_against_reference(x, log_decay, log_gate, FP32_TOL, regime, chunk_size=chunk_size)


@pytest.mark.parametrize(
    "shape,constant",
    [
        ((7,), False),  # broadcasts along time, not heads
        ((3, 1), True),
        ((1, 3, 1), True),
        ((1,), True),
        ((1, 1, 1), True),
        ((2, 3, 1), False),
        ((1, 3, 7), False),
        ((3, 7), False),
        ((2, 3, 7), False),
    ],
)
def test_a_decay_without_batch_or_time_extent_takes_the_constant_decay_form(shape, constant, monkeypatch):
    # v1's keys pass one decay per head: the fast form for them must actually run (and agree with
    # the general form, which a (B, H, T) decay takes, and with the spec).
    module = importlib.import_module("mosaics_lab.ops.leaky_average")  # `ops.leaky_average` is the function

    calls = []
    original = module._within_chunks_constant_decay
    monkeypatch.setattr(module, "_within_chunks_constant_decay", lambda *a: calls.append(1) or original(*a))
    x = torch.randn(2, 3, 7, 4, generator=torch.Generator().manual_seed(0))
    log_decay = -torch.rand(shape, generator=torch.Generator().manual_seed(1))
    k = leaky_average(x, log_decay, chunk_size=4)
    assert bool(calls) == constant
    assert_close("k", k, leaky_average_reference(x, log_decay), FP32_TOL)
    calls.clear()
    general = leaky_average(x, log_decay.expand(2, 3, 7).contiguous(), chunk_size=4)  # (B, H, T)
    assert not calls
    assert_close("k vs general form", k, general, FP32_TOL)


def test_a_gate_or_a_document_mask_keeps_the_general_form(monkeypatch):
    module = importlib.import_module("mosaics_lab.ops.leaky_average")  # `ops.leaky_average` is the function

    monkeypatch.setattr(module, "_within_chunks_constant_decay", lambda *a: pytest.fail("constant form used"))
    x = torch.randn(2, 3, 7, 4)
    log_decay = -torch.rand(1, 3, 1)
    leaky_average(x, log_decay, torch.zeros(2, 3, 7))
    leaky_average(x, log_decay, doc_ids=torch.tensor([[0, 0, 0, 1, 1, 1, 1]] * 2))


def test_reference_matches_the_literal_recurrence():
    # The reference is the spec; pin it to the definition itself, step by step in float64.
    x, log_decay, log_gate = make_inputs((2, 3, 30, 4), torch.float64, "moderate")
    kbar = torch.zeros(2, 3, 4, dtype=torch.float64)
    expected = []
    for t in range(30):
        kbar = log_gate[..., t, None].exp() * x[..., t, :] + log_decay[..., t, None].exp() * kbar
        expected.append(kbar / kbar.norm(dim=-1, keepdim=True))
    expected = torch.stack(expected, dim=-2)
    # eps (1e-6, on the rescaled norm ~1) is the only difference from the exact kbar / ||kbar||.
    torch.testing.assert_close(leaky_average_reference(x, log_decay, log_gate), expected, rtol=0, atol=1e-5)


def test_gate_shift_common_to_all_steps_leaves_k_unchanged():
    # A gate added to every step scales kbar by exp(shift), which the normalisation removes: however
    # small ||kbar|| gets, eps acts on the rescaled state only (MODELS.md 0).
    x, log_decay, log_gate = make_inputs((1, 2, 100, 8), torch.float32, "moderate")
    base = leaky_average(x, log_decay, log_gate).detach()
    # The tolerance grows with the shift only because float32 rounds log_gate + shift (ulp 3e-5 at 500).
    for shift, atol in ((50.0, 1e-5), (-50.0, 1e-5), (-500.0, 1e-3)):
        shifted = leaky_average(x, log_decay, log_gate + shift).detach()
        torch.testing.assert_close(shifted, base, rtol=0, atol=atol)
    torch.testing.assert_close(base.norm(dim=-1), torch.ones(1, 2, 100), rtol=1e-4, atol=1e-4)


EXTREME_GATES = [-10.0, -20.0, -100.0, -500.0, 500.0]


@pytest.mark.parametrize("gate", EXTREME_GATES)
@pytest.mark.parametrize("decay", ["moderate", "near_zero", "strong"])
def test_keys_are_unit_norm_for_any_gate_and_decay(gate, decay):
    # Unit-norm rows of x, as the issue measured: ||k|| was 0.978 at -10, 0.454 at -14, 0 at -500.
    B, H, T, D = 2, 3, 130, 8
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(B, H, T, D, generator=gen)
    x = x / x.norm(dim=-1, keepdim=True)
    log_decay = {
        "moderate": -torch.rand(B, H, T, generator=gen),
        "near_zero": torch.full((B, H, T), -1e-6),
        "strong": torch.full((B, H, T), -30.0),
    }[decay]
    for log_gate in (torch.full((B, H, T), gate), gate + torch.randn(B, H, T, generator=gen)):
        norms = leaky_average(x, log_decay, log_gate).norm(dim=-1)
        torch.testing.assert_close(norms, torch.ones_like(norms), rtol=0, atol=1e-5)
    for gate_all in (-1000.0, 1000.0):
        norms = leaky_average(x, log_decay, torch.full((B, H, T), gate_all)).norm(dim=-1)
        torch.testing.assert_close(norms, torch.ones_like(norms), rtol=0, atol=1e-5)


@pytest.mark.parametrize("gate", EXTREME_GATES)
@pytest.mark.parametrize("T", [1, 65, 200])
def test_fast_matches_float64_log_space_reference_at_extreme_gates(gate, T):
    x, log_decay, log_gate = make_inputs((2, 3, T, 5), torch.float32, "moderate")
    log_gate = (log_gate.detach() + gate).requires_grad_(True)
    check_fast_against_reference(x, log_decay, log_gate, FP32_TOL, "moderate")


def test_all_zero_input_gives_zero_keys_and_finite_gradients():
    x = torch.zeros(1, 2, 70, 4, requires_grad=True)
    log_decay = torch.full((1, 2, 70), -0.5, requires_grad=True)
    log_gate = torch.full((1, 2, 70), -300.0, requires_grad=True)
    k = leaky_average(x, log_decay, log_gate)
    assert torch.equal(k, torch.zeros_like(k))
    grads = torch.autograd.grad(k.sum(), (x, log_decay, log_gate))
    assert all(torch.isfinite(g).all() for g in grads)


def two_document_ids(B: int, T: int, cut: int) -> torch.Tensor:
    """doc_ids (B, T): document 0 up to position cut - 1, document 1 from cut on."""
    return (torch.arange(T) >= cut).long().expand(B, T)


@pytest.mark.parametrize("cut", [1, 31, 32, 33, 100])
@pytest.mark.parametrize("regime", ["moderate", "decay_near_zero", "gates_and_decays_mixed"])
def test_document_mask_matches_reference_and_restarts_the_state(cut, regime):
    B, H, T, D = 2, 3, 130, 5
    x, log_decay, log_gate = make_inputs((B, H, T, D), torch.float32, regime)
    doc_ids = two_document_ids(B, T, cut)
    k_ref, grads_ref, grad_out = outputs_and_grads(
        leaky_average_reference, x, log_decay, log_gate, doc_ids=doc_ids
    )
    k, grads, _ = outputs_and_grads(leaky_average, x, log_decay, log_gate, grad_out, doc_ids=doc_ids)
    assert_close("k", k, k_ref, FP32_TOL)
    for name, g, g_ref in zip(("dx", "dlog_decay", "dlog_gate"), grads, grads_ref):
        assert_close(name, g, g_ref, FP32_TOL)
    # The second document alone gives the same keys: nothing of the first reaches it.
    alone = leaky_average(x[:, :, cut:], log_decay[:, :, cut:], log_gate[:, :, cut:])
    torch.testing.assert_close(k[:, :, cut:], alone, rtol=1e-5, atol=1e-6)
    # The first document is untouched by the second (causality).
    torch.testing.assert_close(k[:, :, :cut], leaky_average(x, log_decay, log_gate)[:, :, :cut])


def test_document_ids_without_boundary_give_exactly_the_unmasked_output():
    x, log_decay, log_gate = make_inputs((2, 3, 100, 5), torch.float32, "moderate")
    same = leaky_average(x, log_decay, log_gate, doc_ids=torch.full((2, 100), 7))
    assert torch.equal(same, leaky_average(x, log_decay, log_gate))


def test_document_ids_of_wrong_shape_or_dtype_raise_value_error():
    x = torch.randn(2, 3, 10, 4)
    with pytest.raises(ValueError, match=r"doc_ids must have shape \(B, T\)"):
        leaky_average(x, torch.zeros(1, 3, 1), doc_ids=torch.zeros(2, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        leaky_average(x, torch.zeros(1, 3, 1), doc_ids=torch.zeros(2, 10))


def test_output_keeps_input_dtype_and_shape():
    x, log_decay, log_gate = make_inputs((2, 3, 65, 5), torch.bfloat16, "moderate")
    k = leaky_average(x, log_decay, log_gate)
    assert k.dtype == torch.bfloat16 and k.shape == x.shape


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


def test_memory_saved_for_backward_grows_linearly_in_T():
    sizes = {}
    for T in (1024, 4096):
        x, log_decay, log_gate = make_inputs((1, 2, T, 16), torch.float32, "moderate")
        sizes[T] = saved_bytes_of_forward(leaky_average, x, log_decay, log_gate)
    # Linear: x4 in T gives x4 in memory (plus small per-level terms); quadratic would give x16.
    assert sizes[4096] < 4.5 * sizes[1024], sizes


def test_log_decay_that_does_not_broadcast_raises_value_error():
    x = torch.randn(2, 3, 10, 4)
    with pytest.raises(ValueError, match="log_decay"):
        leaky_average(x, torch.zeros(2, 4, 10))


@pytest.mark.slow
def test_leaky_average_compiles_with_fullgraph():
    x, log_decay, log_gate = make_inputs((1, 2, 100, 8), torch.float32, "gates_and_decays_mixed")
    compiled = torch.compile(leaky_average, fullgraph=True, dynamic=False)
    k_ref, grads_ref, grad_out = outputs_and_grads(leaky_average, x, log_decay, log_gate)
    k, grads, _ = outputs_and_grads(compiled, x, log_decay, log_gate, grad_out)
    assert_close("k", k, k_ref, FP32_TOL)
    for name, g, g_ref in zip(("dx", "dlog_decay", "dlog_gate"), grads, grads_ref):
        assert_close(name, g, g_ref, FP32_TOL)
