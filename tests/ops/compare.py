"""Comparison helper shared by the ops tests: relative error of a fast op against its reference."""

from __future__ import annotations

import torch


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    """||actual - expected|| / ||expected|| < tol (exact zero where the reference is exactly zero)."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    diff = (actual.double() - expected.double()).norm()
    ref = expected.double().norm()
    if ref == 0:
        assert diff == 0, f"{name}: expected exactly 0, got norm {diff:.2e}"
        return
    rel = (diff / ref).item()
    assert rel < tol, f"{name}: relative error {rel:.2e} >= {tol:.0e}"
