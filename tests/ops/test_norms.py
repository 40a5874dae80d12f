"""unit_rows against its plain statement, scale * x / (||x|| + eps)."""

from __future__ import annotations

import pytest
import torch

from mosaics_lab.ops import unit_rows


def plain(x, eps, scale):
    return scale * x / (torch.linalg.vector_norm(x, dim=-1, keepdim=True) + eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_scale", [False, True])
def test_unit_rows_matches_the_plain_formula_and_its_gradients(dtype, with_scale):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 5, generator=gen, dtype=dtype)
    x[0, 0, 0] = 0.0  # an all-zero row: 0 out, finite gradients
    x.requires_grad_(True)
    scale = (
        (torch.rand(1, 3, 1, 1, generator=gen, dtype=dtype) + 0.5).requires_grad_(True) if with_scale else 1.0
    )
    grad_out = torch.randn(2, 3, 7, 5, generator=gen, dtype=dtype)
    inputs = [x, scale] if with_scale else [x]
    got = unit_rows(x, 1e-6, scale)
    want = plain(x, 1e-6, scale)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    assert torch.equal(got[0, 0, 0], torch.zeros(5, dtype=dtype))
    for g, w in zip(torch.autograd.grad(got, inputs, grad_out), torch.autograd.grad(want, inputs, grad_out)):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, rtol=10 * tol, atol=10 * tol)


def test_unit_rows_are_unit_norm():
    x = torch.randn(4, 9, 16) * 1e3
    norms = torch.linalg.vector_norm(unit_rows(x, 1e-6), dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
