"""Document layout of a block of tokens: which positions start, end and belong to which document.

Shapes: B batch, T time steps.

Training blocks are cut from a stream of documents joined by `<|eot|>`. With a document mask, every
memory (and a baseline's attention) only relates positions of the same document. A model computes a
`Documents` once per forward from `doc_ids` (B, T) and hands it to the ops, which read the parts
they need: `leaky_average` restarts its state at `starts`, `kernel_regression` masks pairs of
different documents, the value peek stops at `ends`, the adaptive bandwidth counts pairs from
`positions`, and the baselines restart their positions there.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = ["Documents", "as_documents", "document_ids"]


def document_ids(tokens: torch.Tensor, eot_id: int) -> torch.Tensor:
    """doc_ids (B, T) int64 from token ids (B, T): the number of `<|eot|>` strictly before each
    position, so the `<|eot|>` token belongs to the document it ends."""
    is_eot = (tokens == eot_id).to(torch.int64)
    return is_eot.cumsum(-1) - is_eot


@dataclass(eq=False)
class Documents:
    """What the ops need to know of the documents in a block; build it with `as_documents`.

    ids: (B, T) document id of each position (any integers; equal values = same document, and a
    document occupies consecutive positions). starts / ends: (B, T) bool, the first / last position
    of each document. positions: (B, T) int64, the 0-based position inside its document.
    """

    ids: torch.Tensor
    starts: torch.Tensor
    ends: torch.Tensor
    positions: torch.Tensor
    # FlexAttention block masks of this layout, per (min_lag, max_lag): every layer's memory with
    # the same lags shares one. Filled by kernel_regression; lives as long as this forward's layout.
    block_masks: dict = field(default_factory=dict, repr=False)

    @functools.cached_property
    def longest(self) -> int:
        """Length of the longest document (a Python int: one host sync, only where a path needs it)."""
        return int(self.positions.max()) + 1 if self.positions.numel() else 0

    @property
    def has_boundaries(self) -> bool:
        """Whether any row holds more than one document (otherwise the mask changes nothing)."""
        return self.longest < self.ids.shape[-1]


def as_documents(doc_ids: torch.Tensor | Documents, B: int, T: int) -> Documents:
    """Validate doc_ids (B, T) of an integer dtype and build its `Documents` (or pass one through)."""
    if isinstance(doc_ids, Documents):
        ids = doc_ids.ids
    else:
        ids = doc_ids
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or tuple(ids.shape) != (B, T):
        shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ValueError(f"doc_ids must have shape (B, T) = {(B, T)}, got {shape}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise ValueError(f"doc_ids must be an integer tensor (document ids), got dtype {ids.dtype}")
    if isinstance(doc_ids, Documents):
        return doc_ids
    changes = ids[:, 1:] != ids[:, :-1]  # (B, T - 1)
    starts = F.pad(changes, (1, 0), value=True)  # position 0 starts a document
    ends = F.pad(changes, (0, 1), value=True)  # the last position ends one
    t = torch.arange(T, device=ids.device)
    first = torch.where(starts, t, 0).cummax(-1).values  # start of each position's document
    return Documents(ids=ids, starts=starts, ends=ends, positions=t - first)
