"""Row normalisation with the guard every memory uses: x / (||x||_2 + eps), optionally times a scale.

Computed as x * (scale / (||x|| + eps)): the division and the scale act on the (..., 1) norms, so
the full-size tensor sees one multiplication, forward and backward, instead of a division and a
product (3.41 -> 1.63 ms fwd + bwd on 2 idle CPU threads at (1, 4, 4096, 32)); equal to
x / (||x|| + eps) * scale up to float rounding.
"""

from __future__ import annotations

import torch

__all__ = ["unit_rows"]


def unit_rows(x: torch.Tensor, eps: float, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """scale * x / (||x||_2 + eps) over the last dimension; scale broadcasts against (..., 1)."""
    return x * (scale / (torch.linalg.vector_norm(x, dim=-1, keepdim=True) + eps))
