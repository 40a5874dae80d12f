"""Fake models whose logits the tests control: a label-lookup oracle, a random guesser, a model with
a chosen per-position loss, and one that refuses long sequences like gpt2's learned positions.

Shape letters: B = batch, T = positions, V = vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from mosaics_lab.data.tasks import SyntheticTask, TaskExample
from mosaics_lab.evaluation.icl import TaskEvalOptions, eval_examples, variants

CONFIDENT = 20.0


class _Fake(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # so .to(device) / model_device have a parameter


class LookupOracle(_Fake):
    """Knows the answer of every example it was shown: one-hot on the label at labelled positions, and
    for RegBench equal logits on every legal next symbol (so accuracy 1 and TVD 0)."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.table: dict[bytes, torch.Tensor] = {}

    def add(self, examples: Iterable[TaskExample]) -> None:
        for ex in examples:
            logits = torch.zeros(len(ex.input_ids), self.vocab_size)
            if "legal_next" in ex.meta:  # RegBench: uniform over the automaton's next-symbol set
                legal = torch.from_numpy(np.asarray(ex.meta["legal_next"], dtype=bool))
                logits[:, : legal.shape[1]] = torch.where(legal, 0.0, -CONFIDENT)
            else:
                labelled = np.flatnonzero(ex.labels != -100)
                logits[labelled, torch.from_numpy(ex.labels[labelled])] = CONFIDENT
            self.table[ex.input_ids.tobytes()] = logits

    def add_task(self, task: SyntheticTask, options: TaskEvalOptions) -> None:
        """Everything the evaluator will score for ``task`` under ``options``."""
        for variant in variants(task, options):
            self.add(eval_examples(variant.task, options))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        out = torch.zeros(B, T, self.vocab_size)
        for b, row in enumerate(idx.cpu().numpy().astype(np.int64)):
            found = self.table.get(row.tobytes())
            if found is not None:
                out[b] = found
        return out + 0 * self.anchor


class RandomGuesser(_Fake):
    """Independent N(0, 1) logits: argmax uniform over the vocabulary."""

    def __init__(self, vocab_size: int, seed: int = 0) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.gen = torch.Generator().manual_seed(seed)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.randn(*idx.shape, self.vocab_size, generator=self.gen) + 0 * self.anchor


class ChosenLoss(_Fake):
    """On token-0 sequences, the loss at position t is exactly ``loss_at(t)``: logits are the log
    probabilities p_t on token 0 and 1 - p_t on token 1 (and ~0 elsewhere), p_t = exp(-loss_at(t))."""

    def __init__(self, loss_at, vocab_size: int = 4, max_len: int | None = None) -> None:
        super().__init__()
        self.loss_at = loss_at
        self.vocab_size = vocab_size
        self.max_len = max_len

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        if self.max_len is not None and self.max_len < T:
            raise ValueError(f"has learned positions for {self.max_len} tokens, got a sequence of {T}")
        p = torch.exp(-torch.tensor([float(self.loss_at(t)) for t in range(T)], dtype=torch.float64))
        logits = torch.full((B, T, self.vocab_size), -1e4, dtype=torch.float64)
        logits[:, :, 0] = p.log()
        logits[:, :, 1] = torch.log1p(-p)
        return logits.float() + 0 * self.anchor
