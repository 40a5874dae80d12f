"""Language-modelling evaluators: validation loss / perplexity, per-position loss and the in-context
gain, and context-length extrapolation.

Batches are ``{"input_ids": (B, T), "labels": (B, T)}`` as the data layer's ``LMDataModule`` yields
them (labels -100 where there is no target), so these work on token streams (stories, text) and on
synthetic-task examples alike; on task examples only the labelled positions carry a loss.

- per-position loss: the cross entropy at position t (the prediction after reading t + 1 tokens),
  averaged over many windows; NaN (None in JSON) at positions that never carry a label.
- in-context gain, on the late context (``in_context_gain``): mean loss over the reference positions
  32..63 (``GAIN_REFERENCE``) minus mean loss over the last quarter of the window (T - T // 4 .. T - 1).
  Positive: the model still predicts better after reading hundreds of tokens than after 32..64. The
  first 32 positions are left out on purpose: their loss falls steeply for any model (the first
  tokens have almost no context), and a gain over them measured mostly positions 0..8. Windows
  shorter than 128 tokens compare their second quarter (T // 4 .. T // 2 - 1) with their last one
  (the same ranges at T = 128).
- slope per doubling (``loss_slope_per_doubling``): the least-squares slope b of
  loss_t ~ a + b log2(t + 1) over the positions t >= 32 (T // 4 below 128 tokens), t + 1 being the
  tokens read: nats per doubling of the context, negative while more context keeps helping.
  Positions 0-indexed throughout; positions without a label (NaN) are left out of both.
- extrapolation: the per-position loss at lengths beyond the training length (the model runs at
  the longer T unchanged). A model that refuses a length (gpt2's learned positions) gets "n/a".

Shape letters: B = batch, T = window length, V = the model's vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, Metric

from mosaics_lab.data.tasks.base import IGNORE_INDEX
from mosaics_lab.evaluation.common import (
    EvalError,
    EvalResult,
    LengthSpec,
    Progress,
    finite_or_none,
    forward_logits,
    length_limit,
)

GAIN_REFERENCE = (32, 64)  # positions [32, 64): the late context's starting point
# exp() of a loss above this overflows float64; such a perplexity is reported as None.
_MAX_LOG_PPL = 700.0


class PerPositionLoss(Metric):
    """Sum and count of the next-token cross entropy at each of T positions, over batches.

    torchmetrics has no per-position reduction (its aggregators reduce over every element), so this
    keeps a (T,) sum and a (T,) count, summed across processes like the other accumulators here.
    """

    full_state_update = False

    def __init__(self, length: int) -> None:
        super().__init__()
        self.length = length
        self.add_state("loss_sum", default=torch.zeros(length, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(length, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        if logits.ndim != 3 or labels.shape != logits.shape[:2] or labels.shape[1] != self.length:
            raise ValueError(
                f"expected logits (B, {self.length}, V) and labels (B, {self.length}), "
                f"got {tuple(logits.shape)} and {tuple(labels.shape)}"
            )
        loss = token_losses(logits, labels)  # (B, T), 0 where unlabelled
        self.loss_sum += loss.double().sum(dim=0)
        self.count += (labels != IGNORE_INDEX).sum(dim=0)

    def compute(self) -> torch.Tensor:
        """(T,) mean loss per position; NaN where no window had a label there."""
        curve = self.loss_sum / self.count.clamp(min=1)
        return torch.where(self.count > 0, curve, torch.full_like(curve, float("nan")))


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, T) next-token cross entropy in float32, 0 at unlabelled positions."""
    # cross_entropy wants the class dim second: (B, V, T).
    return F.cross_entropy(
        logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none"
    )


def gain_ranges(length: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The reference positions and the last quarter of a window of ``length``, as [start, end) pairs."""
    quarter = max(1, length // 4)
    last = (length - quarter, length)
    if length >= 2 * GAIN_REFERENCE[1]:
        return GAIN_REFERENCE, last
    return (length // 4, min(length // 2, last[0])), last


def _finite_mean(values: np.ndarray) -> float | None:
    return float(np.nanmean(values)) if np.isfinite(values).any() else None


def loss_slope_per_doubling(curve: np.ndarray, start: int) -> float | None:
    """Least-squares slope of loss_t against log2(t + 1) over the finite positions t >= ``start``
    (None with fewer than two)."""
    t = np.arange(len(curve))
    keep = (t >= start) & np.isfinite(curve)
    if keep.sum() < 2:
        return None
    x = np.log2(t[keep] + 1.0)
    y = curve[keep]
    x_centred = x - x.mean()
    return float((x_centred * (y - y.mean())).sum() / (x_centred**2).sum())


def in_context_gain(curve: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """The late-context summary of a per-position loss curve (module docstring): ``loss_reference``
    (mean over the reference positions), ``loss_last_quarter``, ``in_context_gain`` (their
    difference), ``loss_slope_per_doubling``, and the ``reference_positions`` [start, end) used."""
    curve = np.asarray(curve, dtype=np.float64)
    (ref_start, ref_end), (last_start, last_end) = gain_ranges(len(curve))
    reference = _finite_mean(curve[ref_start:ref_end]) if ref_end > ref_start else None
    last = _finite_mean(curve[last_start:last_end])
    gain = reference - last if reference is not None and last is not None else None
    return {
        "loss_reference": reference,
        "loss_last_quarter": last,
        "in_context_gain": gain,
        "loss_slope_per_doubling": loss_slope_per_doubling(curve, ref_start),
        "reference_positions": (ref_start, ref_end),
    }


def gain_definitions(length: int | None = None) -> dict[str, str]:
    """The summary's definitions in words, for the JSON and the terminal: at a window of ``length``
    (its actual positions), or for windows of any length (None)."""
    if length is None:
        reference = f"positions {GAIN_REFERENCE[0]}-{GAIN_REFERENCE[1] - 1} (T/4 to T/2 - 1 below 128 tokens)"
        last, start = "the last quarter of the window", f"{GAIN_REFERENCE[0]} (T/4 below 128 tokens)"
    else:
        (ref_start, ref_end), (last_start, last_end) = gain_ranges(length)
        reference = f"positions {ref_start}-{ref_end - 1}"
        last, start = f"the last quarter (positions {last_start}-{last_end - 1})", str(ref_start)
    return {
        "in_context_gain": f"mean loss at {reference} minus mean loss over {last}; positions 0-indexed",
        "loss_slope_per_doubling": (
            f"least-squares slope of the loss against log2(position + 1) over positions >= {start}: "
            "nats per doubling of the context read, negative while more context helps"
        ),
    }


def _take(batches: Iterable[dict], max_batches: int, progress: Progress | None = None) -> Iterable[dict]:
    for i, batch in enumerate(batches):
        if i >= max_batches:
            return
        yield batch
        if progress is not None:
            progress.update(1)


def evaluate_val(
    model: nn.Module, batches: Iterable[dict], max_batches: int, progress: Progress | None = None
) -> EvalResult:
    """Mean next-token loss over the labelled positions of up to ``max_batches`` batches, and exp of it.

    A ``MeanMetric`` weighted by the labelled-token count rather than ``torchmetrics.text.Perplexity``:
    that one takes the log of softmax probabilities, which underflows to an infinite loss for a
    confidently wrong token; cross entropy from log-softmax does not.
    """
    model.eval()
    mean = MeanMetric()
    window_losses: list[float] = []
    windows = 0
    for batch in _take(batches, max_batches, progress):
        labels = batch["labels"]
        losses = token_losses(forward_logits(model, batch["input_ids"]), labels)
        counts = (labels != IGNORE_INDEX).sum(dim=1)
        has = counts > 0
        if not has.any():
            continue
        per_window = losses.sum(dim=1)[has] / counts[has]
        mean.update(per_window, weight=counts[has].float())
        window_losses += per_window.tolist()
        windows += int(has.sum())
    if windows == 0:
        raise EvalError("no validation batch with a labelled token; is the run's val split empty?")
    loss = float(mean.compute())
    ppl = math.exp(loss) if loss < _MAX_LOG_PPL else None
    return EvalResult(
        metrics={"loss": finite_or_none(loss), "ppl": finite_or_none(ppl)},
        curves={"window_loss": window_losses},
        info={"num_windows": windows},
    )


def per_position_curve(
    model: nn.Module,
    batches: Iterable[dict],
    length: int,
    max_batches: int,
    progress: Progress | None = None,
) -> tuple[np.ndarray, int]:
    """The (T,) per-position loss over up to ``max_batches`` batches of windows of ``length``, and the
    number of windows used."""
    model.eval()
    metric = PerPositionLoss(length)
    windows = 0
    for batch in _take(batches, max_batches, progress):
        metric.update(forward_logits(model, batch["input_ids"]), batch["labels"])
        windows += batch["input_ids"].shape[0]
    if windows == 0:
        raise EvalError(
            f"no evaluation windows of {length} tokens: the run's val split is shorter than one window; "
            "prepare more validation data or evaluate shorter lengths"
        )
    return metric.compute().numpy(), windows


def _curve_json(curve: np.ndarray) -> list[float | None]:
    return [finite_or_none(v) for v in curve]


def evaluate_per_position(
    model: nn.Module,
    batches: Iterable[dict],
    length: int,
    max_batches: int,
    progress: Progress | None = None,
) -> EvalResult:
    """Per-position loss at the training length: one point per position, plus the late-context
    summary (``in_context_gain``, ``loss_slope_per_doubling``; definitions in ``info``)."""
    curve, windows = per_position_curve(model, batches, length, max_batches, progress)
    gain = in_context_gain(curve)
    reference = list(gain.pop("reference_positions"))
    points = [
        {"position": t, "status": "ok", "metrics": {"loss": finite_or_none(v)}} for t, v in enumerate(curve)
    ]
    mean_loss = finite_or_none(np.nanmean(curve)) if np.isfinite(curve).any() else None
    return EvalResult(
        metrics={"mean_loss": mean_loss, **gain},
        axis="position",
        points=points,
        curves={"loss": _curve_json(curve)},
        info={
            "num_windows": windows,
            "length": length,
            "gain_reference_positions": reference,
            "definitions": gain_definitions(length),
        },
    )


def evaluate_extrapolation(
    model: nn.Module,
    batches_at: Callable[[int], Iterable[dict]],
    train_length: int,
    lengths: Sequence[LengthSpec],
    max_batches: int,
    progress: Progress | None = None,
) -> EvalResult:
    """Per-position loss at each length of ``lengths`` (``batches_at(T)`` gives windows of T tokens).

    Point metrics per length: ``loss`` (mean over the window), ``loss_beyond_train`` (mean over the
    positions >= the training length; None at lengths that have none), ``in_context_gain`` and
    ``loss_slope_per_doubling`` (the late-context summary of that length's curve; module docstring).
    """
    model.eval()
    points, curves = [], {}
    for spec in lengths:
        length = spec.resolve(train_length)
        point = {"length": length, "label": spec.text, "factor": spec.factor}
        names = ("loss", "loss_beyond_train", "in_context_gain", "loss_slope_per_doubling")
        reason = length_limit(model, length)
        if reason is not None:
            points.append({**point, "status": "n/a", "reason": reason, "metrics": dict.fromkeys(names)})
            continue
        curve, windows = per_position_curve(model, batches_at(length), length, max_batches, progress)
        beyond = curve[train_length:]
        gain = in_context_gain(curve)
        metrics = {
            "loss": finite_or_none(np.nanmean(curve)) if np.isfinite(curve).any() else None,
            "loss_beyond_train": finite_or_none(np.nanmean(beyond)) if np.isfinite(beyond).any() else None,
            "in_context_gain": finite_or_none(gain["in_context_gain"]),
            "loss_slope_per_doubling": finite_or_none(gain["loss_slope_per_doubling"]),
        }
        points.append({**point, "status": "ok", "num_windows": windows, "metrics": metrics})
        curves[str(length)] = _curve_json(curve)
    ran = [p for p in points if p["status"] == "ok"]
    headline = {"loss_at_longest": ran[-1]["metrics"]["loss"]} if ran else {}
    info = {
        "train_length": train_length,
        "longest_length": ran[-1]["length"] if ran else None,
        "definitions": gain_definitions(),  # at each length's own window
    }
    return EvalResult(metrics=headline, axis="length", points=points, curves=curves, info=info)
