"""Metrics of the in-context learning tasks (``mosaics_lab.data.tasks``).

Functions compute one batch and return sums and counts (or means plus a count), so callers can
accumulate across batches and processes; the ``torchmetrics.Metric`` classes below do exactly that,
with DDP/FSDP synchronisation of their sum states handled by torchmetrics.

Why custom ``Metric`` classes rather than ``torchmetrics.classification.MulticlassAccuracy``: that
one covers the masked accuracy only (and needs the class count up front); exact match over a
variable set of labelled positions and the total variation distance to a PFA's next-symbol
distribution are not in torchmetrics. One (sum, count) pattern keeps the three alike.

Shape letters: B = batch, T = positions, V = vocabulary (the model's; it may exceed the task's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torchmetrics import Metric

from mosaics_lab.data.tasks.base import IGNORE_INDEX, TaskExample


def _check_shapes(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"expected logits (B, T, V) and labels (B, T), "
            f"got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )


def masked_accuracy(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct, count): greedy (argmax) predictions equal to the label, over labels != ignore_index."""
    _check_shapes(logits, labels)
    mask = labels != ignore_index
    correct = (logits.argmax(dim=-1) == labels) & mask  # (B, T)
    return correct.sum(), mask.sum()


def exact_match(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """(num_exact, num_examples): an example counts when every labelled position is predicted right.

    Examples without any labelled position are left out of both numbers (there is nothing to match).
    """
    _check_shapes(logits, labels)
    mask = labels != ignore_index
    wrong = (logits.argmax(dim=-1) != labels) & mask  # (B, T)
    has_labels = mask.any(dim=1)
    exact = has_labels & ~wrong.any(dim=1)
    return exact.sum(), has_labels.sum()


def regbench_metrics(
    logits: torch.Tensor,
    legal_next_mask: torch.Tensor,
    score_mask: torch.Tensor,
    support_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Greedy accuracy and total variation distance to the automaton's next-symbol distribution.

    The true distribution at a scored position is uniform over ``legal_next_mask`` (B, T, V). The
    model's distribution is the softmax of ``logits`` restricted to ``support_mask`` (V,) -- the
    task's symbols, see ``RegBench`` -- and renormalised there; None means the whole vocabulary.
    accuracy: the argmax over the support is a legal symbol. tvd: 0.5 * sum |q - p| over the support.
    Returns ``{"accuracy", "tvd"}`` as means over the scored positions (0 when none) and ``"count"``,
    the number of scored positions, to weight batches when accumulating.
    """
    _check_shapes(logits, score_mask)
    if legal_next_mask.shape != logits.shape:
        raise ValueError(f"legal_next_mask must be (B, T, V) like logits, got {tuple(legal_next_mask.shape)}")
    vocab = logits.shape[-1]
    if support_mask is None:
        support_mask = torch.ones(vocab, dtype=torch.bool, device=logits.device)
    if support_mask.shape != (vocab,):
        raise ValueError(f"support_mask must be (V,) = ({vocab},), got {tuple(support_mask.shape)}")

    score_mask = score_mask.bool()
    scored_logits = logits[score_mask].float()[:, support_mask]  # (N, S): N scored positions, S symbols
    legal = legal_next_mask[score_mask][:, support_mask]  # (N, S)
    count = torch.tensor(scored_logits.shape[0], device=logits.device)
    if scored_logits.shape[0] == 0:
        zero = torch.zeros((), device=logits.device)
        return {"accuracy": zero, "tvd": zero.clone(), "count": count}
    num_legal = legal.sum(dim=-1, keepdim=True)
    if bool((num_legal == 0).any()):
        raise ValueError("legal_next_mask has no legal symbol (inside support_mask) at a scored position")

    q = scored_logits.softmax(dim=-1)
    p = legal.float() / num_legal
    tvd = 0.5 * (q - p).abs().sum(dim=-1)  # (N,)
    hit = legal.gather(1, scored_logits.argmax(dim=-1, keepdim=True)).squeeze(1)  # (N,)
    return {"accuracy": hit.float().mean(), "tvd": tvd.mean(), "count": count}


# --- building the RegBench masks from generated examples ------------------------------------------


class RegBenchTargets(NamedTuple):
    """The masks ``regbench_metrics`` needs, as tensors: (B, T, V), (B, T) and (V,) bools."""

    legal_next_mask: torch.Tensor
    score_mask: torch.Tensor
    support_mask: torch.Tensor


def legal_next_mask_from_examples(examples: Sequence[TaskExample], vocab_size: int) -> torch.Tensor:
    """Stack ``meta["legal_next"]`` (L, task vocab) of RegBench examples into (B, T, vocab_size) bools.

    ``vocab_size`` is the model's vocabulary; columns past the task's vocabulary are False.
    """
    masks = [np.asarray(ex.meta["legal_next"], dtype=bool) for ex in examples]
    task_vocab = masks[0].shape[1]
    if vocab_size < task_vocab:
        raise ValueError(f"vocab_size={vocab_size} is smaller than the task's vocabulary ({task_vocab})")
    stacked = np.zeros((len(masks), masks[0].shape[0], vocab_size), dtype=bool)
    stacked[:, :, :task_vocab] = np.stack(masks)
    return torch.from_numpy(stacked)


def score_mask_from_examples(examples: Sequence[TaskExample]) -> torch.Tensor:
    """Stack ``meta["score_mask"]`` of RegBench examples into (B, T) bools."""
    return torch.from_numpy(np.stack([np.asarray(ex.meta["score_mask"], dtype=bool) for ex in examples]))


def symbol_support_mask(num_symbols: int, vocab_size: int) -> torch.Tensor:
    """(V,) True on the symbol ids 0 .. num_symbols - 1: the support of RegBench's distributions."""
    if not 0 < num_symbols <= vocab_size:
        raise ValueError(f"num_symbols must be in 1 .. vocab_size={vocab_size}, got {num_symbols}")
    support = torch.zeros(vocab_size, dtype=torch.bool)
    support[:num_symbols] = True
    return support


def regbench_targets(examples: Sequence[TaskExample], vocab_size: int) -> RegBenchTargets:
    """All three masks for a batch of RegBench examples, for a model with ``vocab_size`` logits."""
    if not examples:
        raise ValueError("regbench_targets needs at least one example")
    return RegBenchTargets(
        legal_next_mask_from_examples(examples, vocab_size),
        score_mask_from_examples(examples),
        symbol_support_mask(int(examples[0].meta["num_symbols"]), vocab_size),
    )


# --- accumulators ----------------------------------------------------------------------------------


class MaskedAccuracy(Metric):
    """Accumulates ``masked_accuracy`` over batches; ``compute`` gives correct / count."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        correct, count = masked_accuracy(logits, labels)
        self.correct += correct
        self.count += count

    def compute(self) -> torch.Tensor:
        return self.correct.float() / self.count.clamp(min=1)


class ExactMatch(Metric):
    """Accumulates ``exact_match`` over batches; ``compute`` gives the fraction of exact examples."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("exact", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        exact, count = exact_match(logits, labels)
        self.exact += exact
        self.count += count

    def compute(self) -> torch.Tensor:
        return self.exact.float() / self.count.clamp(min=1)


class RegBenchScore(Metric):
    """Accumulates ``regbench_metrics`` over batches, weighting by scored positions."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("accuracy_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tvd_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(
        self,
        logits: torch.Tensor,
        legal_next_mask: torch.Tensor,
        score_mask: torch.Tensor,
        support_mask: torch.Tensor | None = None,
    ) -> None:
        out = regbench_metrics(logits, legal_next_mask, score_mask, support_mask)
        self.accuracy_sum += out["accuracy"].double() * out["count"]
        self.tvd_sum += out["tvd"].double() * out["count"]
        self.count += out["count"]

    def compute(self) -> dict[str, torch.Tensor]:
        denom = self.count.clamp(min=1).double()
        return {"accuracy": self.accuracy_sum / denom, "tvd": self.tvd_sum / denom}
