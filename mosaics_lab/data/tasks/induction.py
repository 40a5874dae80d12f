"""Induction heads with length extrapolation (the synthetic of the Mamba paper, Gu & Dao 2023).

A sequence of L tokens drawn uniformly from the ordinary tokens 0 .. vocab_size - 2; the special
token S = vocab_size - 1 appears exactly twice: once at a uniformly random position i in
0 .. L - 3, immediately followed by the target token x_{i+1}, and once as the last token. The only
label is at the last position: the token that followed the first S. Mamba trains at L = 256 with
vocab 16 and tests at longer L; ``with_seq_len`` gives the extrapolation configs. Metric: accuracy
at the final position.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from mosaics_lab.data.tasks.base import IGNORE_INDEX, SyntheticTask, TaskExample, check_int


@dataclasses.dataclass
class Induction(SyntheticTask):
    """Recall the token after the first special token when the special token recurs at the end."""

    name: ClassVar[str] = "induction"

    vocab_size: int = 16
    seq_len: int = 256

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_int(owner, "vocab_size", self.vocab_size, min_value=3)
        check_int(owner, "seq_len", self.seq_len, min_value=3)

    @property
    def special_id(self) -> int:
        return self.vocab_size - 1

    def with_seq_len(self, seq_len: int) -> Induction:
        """The same task at another length (e.g. 256 .. 4096 for extrapolation)."""
        return dataclasses.replace(self, seq_len=seq_len)

    def example(self, rng: np.random.Generator) -> TaskExample:
        input_ids = rng.integers(0, self.special_id, size=self.seq_len).astype(np.int64)
        trigger = int(rng.integers(0, self.seq_len - 2))
        input_ids[trigger] = self.special_id
        input_ids[-1] = self.special_id
        target = int(input_ids[trigger + 1])
        labels = np.full(self.seq_len, IGNORE_INDEX, dtype=np.int64)
        labels[-1] = target
        return TaskExample(input_ids, labels, {"trigger_position": trigger, "target": target})
