"""The common interface of the synthetic in-context learning tasks.

A task is a typed dataclass config. It knows its vocabulary size and example length, draws one
example from a numpy ``Generator`` (``example``), and draws a deterministic stream of examples for
a split (``examples``). Each example is a ``TaskExample`` aligned for next-token prediction:
``labels[t]`` is the target of the prediction made after reading ``input_ids[: t + 1]``, and
``IGNORE_INDEX`` (-100) where there is no target, so the language-model loss is the cross entropy
over positions with ``labels != IGNORE_INDEX``.

Seeding: example ``i`` of split ``s`` under seed ``k`` is drawn from its own generator,
``SeedSequence(k, spawn_key=(SPLIT_KEYS[s], i))``. Splits therefore never share generator state,
and any example can be regenerated on its own (random access for map-style datasets).

Shape letters: L = example length, B = batch size, V = vocabulary size.
"""

from __future__ import annotations

import abc
import dataclasses
import difflib
import numbers
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np

IGNORE_INDEX = -100

# Spawn keys of the split streams: fixed numbers, so adding a split never reseeds another one.
SPLIT_KEYS: dict[str, int] = {"train": 0, "validation": 1, "test": 2}


@dataclasses.dataclass
class TaskExample:
    """One example: ``input_ids`` and ``labels`` are int64 arrays of shape (L,); ``meta`` is task-specific."""

    input_ids: np.ndarray
    labels: np.ndarray
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        assert self.input_ids.dtype == np.int64 and self.input_ids.ndim == 1, "input_ids must be int64 (L,)"
        assert self.labels.shape == self.input_ids.shape and self.labels.dtype == np.int64


def split_key(split: str) -> int:
    """The spawn key of ``split``; ValueError naming the valid splits for anything else."""
    if split not in SPLIT_KEYS:
        raise ValueError(f"split must be one of {sorted(SPLIT_KEYS)}, got {split!r}")
    return SPLIT_KEYS[split]


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of example ``index`` of ``split`` under ``seed`` (see the module docstring)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_key(split), index)))


def collate(examples: Sequence[TaskExample]) -> dict[str, Any]:
    """Stack equal-length examples: ``input_ids`` and ``labels`` as int64 (B, L), ``meta`` as a list."""
    if not examples:
        raise ValueError("collate needs at least one example")
    lengths = {ex.input_ids.shape[0] for ex in examples}
    if len(lengths) != 1:
        raise ValueError(f"examples must share one length to be stacked, got lengths {sorted(lengths)}")
    return {
        "input_ids": np.stack([ex.input_ids for ex in examples]),
        "labels": np.stack([ex.labels for ex in examples]),
        "meta": [ex.meta for ex in examples],
    }


# --- validation helpers: every message names the field and says what to change ---------------------


def check_int(
    owner: str, field: str, value: Any, *, min_value: int | None = None, max_value: int | None = None
) -> None:
    """Raise ValueError naming ``owner.field`` unless ``value`` is an int in [min_value, max_value]."""
    # bool is an int subclass; a True passed for a count is a bug, not a 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{owner}.{field} must be an int, got {value!r} ({type(value).__name__})")
    if min_value is not None and value < min_value:
        raise ValueError(f"{owner}.{field} must be >= {min_value}, got {value}")
    if max_value is not None and value > max_value:
        raise ValueError(f"{owner}.{field} must be <= {max_value}, got {value}")


def check_float(
    owner: str,
    field: str,
    value: Any,
    *,
    min_value: float | None = None,
    max_value: float | None = None,
    min_exclusive: bool = False,
) -> None:
    """Raise ValueError naming ``owner.field`` unless ``value`` is a finite real number in range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"{owner}.{field} must be a finite number, got {value!r}")
    if min_value is not None and (value <= min_value if min_exclusive else value < min_value):
        raise ValueError(f"{owner}.{field} must be {'>' if min_exclusive else '>='} {min_value}, got {value}")
    if max_value is not None and value > max_value:
        raise ValueError(f"{owner}.{field} must be <= {max_value}, got {value}")


def check_bool(owner: str, field: str, value: Any) -> None:
    """Raise ValueError naming ``owner.field`` unless ``value`` is a bool (no truthy strings)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{owner}.{field} must be a bool, got {value!r}")


def nearest(name: str, candidates: Sequence[str]) -> str:
    """' (did you mean X?)' for the closest candidate, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


class SyntheticTask(abc.ABC):
    """Base of every task config (each subclass is a dataclass).

    Subclasses define ``name``, ``vocab_size``, ``seq_len`` and ``example``; tasks whose examples depend
    on the split beyond the seed stream (RegBench's disjoint automata) override ``split_example``.
    """

    name: ClassVar[str]

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids the task uses: 0 .. vocab_size - 1."""

    @property
    @abc.abstractmethod
    def seq_len(self) -> int:
        """Length L of every example this config generates."""

    @abc.abstractmethod
    def example(self, rng: np.random.Generator) -> TaskExample:
        """Draw one example from ``rng``."""

    def split_example(self, split: str, index: int, rng: np.random.Generator) -> TaskExample:
        """Example ``index`` of ``split`` drawn from ``rng``; the split only selects the seed stream here."""
        return self.example(rng)

    def example_at(self, split: str, index: int, seed: int) -> TaskExample:
        """Example ``index`` of ``split`` under ``seed``: the same arrays every call."""
        check_int(type(self).__name__, "index", index, min_value=0)
        check_int(type(self).__name__, "seed", seed, min_value=0)
        return self.split_example(split, index, example_rng(seed, split, index))

    def examples(self, split: str, n: int, seed: int) -> Iterator[TaskExample]:
        """``n`` examples of ``split``, deterministic in (seed, split); splits use disjoint seed streams."""
        split_key(split)
        check_int(type(self).__name__, "n", n, min_value=0)
        check_int(type(self).__name__, "seed", seed, min_value=0)
        for index in range(n):
            yield self.split_example(split, index, example_rng(seed, split, index))

    def batch(self, split: str, n: int, seed: int) -> dict[str, Any]:
        """``n`` examples of ``split`` stacked by ``collate``: int64 (B, L) arrays plus the metas."""
        return collate(list(self.examples(split, n, seed)))
