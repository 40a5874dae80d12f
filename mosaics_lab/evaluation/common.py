"""What every evaluator shares: the error type, the result record, parsing --lengths / --shots,
running a model in batches, and asking a model whether it can run at a length.

Shape letters: B = batch, T = positions (the evaluated length), V = the model's vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from mosaics_lab.data.tasks.base import TaskExample, collate


class EvalError(ValueError):
    """An evaluation that cannot run as asked; the message says what to change."""


@dataclasses.dataclass
class EvalResult:
    """What one evaluator measured.

    ``metrics``: headline scalars (None where not measurable). ``axis``: the name of the swept
    quantity ("length", "shots", "position") or None; ``points``: one dict per axis value, holding
    the axis value under the key ``axis``, ``status`` "ok" or "n/a" (with a ``reason``, when the
    model cannot run there), ``metrics`` (name -> value, None when n/a) and descriptive keys (number
    of examples, chance level, ...). ``curves``: named lists (e.g. the per-position loss at each
    evaluated length), for the JSON and the plot. ``info``: what was evaluated on (task config,
    number of examples or windows, ...).
    """

    metrics: dict[str, float | None] = dataclasses.field(default_factory=dict)
    axis: str | None = None
    points: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    curves: dict[str, list[float | None]] = dataclasses.field(default_factory=dict)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def point_metric_names(self) -> list[str]:
        """The metrics measured at each point (the TensorBoard series of this result), in order."""
        return list(dict.fromkeys(name for point in self.points for name in point["metrics"]))


def finite_or_none(value: float | torch.Tensor | None) -> float | None:
    """A float for JSON, or None for a missing / NaN / infinite value (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# --- parsing the sweep options ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LengthSpec:
    """One entry of --lengths: a multiple of the reference length ("4x") or a token count ("1024")."""

    text: str
    factor: int | None = None
    tokens: int | None = None

    def resolve(self, reference: int) -> int:
        """The length in tokens, given the reference (training) length."""
        return self.factor * reference if self.factor is not None else int(self.tokens)


_LENGTH_RE = re.compile(r"^(\d+)(x?)$")


def parse_lengths(text: str) -> list[LengthSpec]:
    """'1x,2x,4x,8x' (multiples of the training length) or '256,1024' (tokens), or a mix."""
    specs = []
    for item in (s.strip() for s in str(text).split(",")):
        match = _LENGTH_RE.match(item.lower())
        if not match or int(match.group(1)) < 1:
            raise EvalError(
                f"--lengths: cannot read {item!r} in {text!r}; give comma-separated positive integers, "
                "either multiples of the training length with an 'x' (1x,2x,4x,8x) or token counts (256,1024)"
            )
        value = int(match.group(1))
        specs.append(LengthSpec(item, factor=value) if match.group(2) else LengthSpec(item, tokens=value))
    return specs


def parse_shots(text: str) -> list[int]:
    """'1,2,4,8,16' -> [1, 2, 4, 8, 16]: numbers of demonstration rounds.

    Zero is refused: ``ManyShot`` accepts ``num_shots=0`` but cannot draw such a prompt (it
    concatenates an empty list of rounds), so a 0-shot point would crash half-way through a sweep.
    """
    shots = []
    for item in (s.strip() for s in str(text).split(",")):
        if not item.isdigit() or int(item) < 1:
            raise EvalError(
                f"--shots: cannot read {item!r} in {text!r}; give comma-separated positive integers "
                "(e.g. 1,2,4,8,16)"
            )
        shots.append(int(item))
    return shots


# --- running a model ----------------------------------------------------------------------------------


def model_device(model: nn.Module) -> torch.device:
    """Where the model's weights are (CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


class DocumentMasked(nn.Module):
    """A model run with the document mask it trained with (data.document_mask): ``forward(idx)``
    passes the document ids cut at ``eot_id`` (the <|eot|> belongs to the document it ends)."""

    def __init__(self, model: nn.Module, eot_id: int) -> None:
        super().__init__()
        self.model = model
        self.eot_id = eot_id

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        from mosaics_lab.ops import document_ids

        return self.model(idx, document_ids(idx, self.eot_id))


@torch.inference_mode()
def forward_logits(model: nn.Module, input_ids: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Logits (B, T, V) as float32 on the CPU, for int input ids (B, T); the model is in eval mode."""
    ids = torch.as_tensor(input_ids, dtype=torch.long).to(model_device(model))
    return model(ids).float().cpu()


def length_limit(model: nn.Module, length: int) -> str | None:
    """None when ``model`` runs on sequences of ``length`` tokens, else its reason (ValueError message).

    Asked of the model itself (one forward on a single dummy sequence) rather than decided from its
    architecture name: a model with learned positions (gpt2) refuses lengths beyond its table, a
    memory mosaic or a RoPE model runs at any length, and a future model answers for itself.
    """
    try:
        forward_logits(model, torch.zeros(1, length, dtype=torch.long))
    except ValueError as exc:
        return str(exc)
    return None


def batched(examples: Iterable[TaskExample], batch_size: int) -> Iterator[list[TaskExample]]:
    """Lists of up to ``batch_size`` examples, in order."""
    batch: list[TaskExample] = []
    for example in examples:
        batch.append(example)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def collate_examples(examples: Sequence[TaskExample]) -> dict[str, Any]:
    """``collate`` with the arrays as torch tensors: input_ids and labels int64 (B, T)."""
    out = collate(examples)
    return {
        "input_ids": torch.from_numpy(out["input_ids"]),
        "labels": torch.from_numpy(out["labels"]),
        "meta": out["meta"],
    }


class Progress(Protocol):
    """What the evaluators tick once per scored batch: a tqdm bar (``progress_bar``), or anything
    with ``update(n)``."""

    def update(self, n: int = 1) -> object: ...


def progress_bar(total: int, desc: str, enabled: bool = True) -> Any:
    """A tqdm bar on stderr over ``total`` batches (disabled: prints nothing)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", disable=not enabled, dynamic_ncols=True)


def check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EvalError(f"{name} must be a positive integer, got {value!r}")
