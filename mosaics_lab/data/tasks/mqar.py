"""Multi-query associative recall (MQAR), after Zoology (Arora, Eyuboglu et al., 2023).

Compared point by point with Zoology's generator (HazyResearch/zoology, ``zoology/data/multiquery_ar.py``,
``associative_recall.py`` before 2026) in reports/mqar_generator.md; tests/tasks/test_mqar_zoology.py
pins what was verified.

Layout of one example of length L with ``num_kv_pairs`` = K (the Zoology generator, one pass):

    k_1 v_1 k_2 v_2 ... k_K v_K | s_0 s_0' s_1 s_1' ... s_{S-1} s_{S-1}'      S = (L - 2K) // 2 slots

Keys are drawn without replacement from ``1 .. vocab_size // 2 - 1`` (0 is excluded, as in Zoology),
values without replacement from ``vocab_size // 2 .. vocab_size - 1``. The K queries go into K
distinct slots drawn without replacement with probability p(slot j) ∝ a * (j + 1) ** (a - 1),
a = ``power_a`` (a power law favouring slots near the context; a = 1 is uniform). Key ``k_i`` is
sampled before ``k_{i+1}``, so earlier keys tend to get earlier slots, exactly as in Zoology. At a
query slot the first token is the key and its label is the bound value (the prediction made after
reading the key); every other label is -100. All other query-region tokens (including the token
right after a query key) are 0, or, with ``random_non_queries``, uniform over the whole vocabulary.

Deviations from Zoology, all deliberate:
- Zoology requires an even L and ``vocab_size > L``; here an odd L leaves one trailing filler
  token, and the vocabulary only has to hold the keys and values (the ``vocab_size > L`` check
  in Zoology protects nothing in the generator).
- ``power_a`` must lie in (0, 1]; Zoology takes any number (a > 1 would favour slots far from the
  context; none of its configs uses it).
- Zoology's random fillers are uniform over all ``vocab_size`` ids, so a filler may equal a key of
  the same example; that is kept (it carries no label, and it is part of the published task).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from mosaics_lab.data.tasks.base import (
    IGNORE_INDEX,
    SyntheticTask,
    TaskExample,
    check_bool,
    check_float,
    check_int,
)


@dataclasses.dataclass
class MQAR(SyntheticTask):
    """Multi-query associative recall; metric: accuracy over the query positions (labels != -100)."""

    name: ClassVar[str] = "mqar"

    vocab_size: int = 8192
    seq_len: int = 256
    num_kv_pairs: int = 16
    power_a: float = 0.01
    random_non_queries: bool = True

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_int(owner, "num_kv_pairs", self.num_kv_pairs, min_value=1)
        check_int(owner, "vocab_size", self.vocab_size, min_value=4)
        # Keys live in 1 .. V/2 - 1 and values in V/2 .. V - 1, both drawn without replacement.
        if self.num_kv_pairs > self.vocab_size // 2 - 1:
            raise ValueError(
                f"{owner}.vocab_size={self.vocab_size} holds only {self.vocab_size // 2 - 1} distinct keys "
                f"(ids 1 .. vocab_size // 2 - 1) but num_kv_pairs={self.num_kv_pairs}; raise vocab_size"
            )
        check_int(owner, "seq_len", self.seq_len, min_value=4 * self.num_kv_pairs)
        check_float(owner, "power_a", self.power_a, min_value=0.0, max_value=1.0, min_exclusive=True)
        check_bool(owner, "random_non_queries", self.random_non_queries)

    @property
    def num_slots(self) -> int:
        """Two-token query slots after the key-value context."""
        return (self.seq_len - 2 * self.num_kv_pairs) // 2

    def slot_probabilities(self) -> np.ndarray:
        """Zoology's power law over slots: p(j) ∝ a * (j + 1) ** (a - 1), normalised."""
        p = self.power_a * np.arange(1, self.num_slots + 1, dtype=np.float64) ** (self.power_a - 1)
        return p / p.sum()

    def example(self, rng: np.random.Generator) -> TaskExample:
        k, half = self.num_kv_pairs, self.vocab_size // 2
        context = 2 * k
        keys = rng.choice(np.arange(1, half), size=k, replace=False)
        values = rng.choice(np.arange(half, self.vocab_size), size=k, replace=False)
        slots = rng.choice(self.num_slots, size=k, replace=False, p=self.slot_probabilities())

        input_ids = np.zeros(self.seq_len, dtype=np.int64)
        input_ids[0:context:2] = keys
        input_ids[1:context:2] = values
        query_positions = context + 2 * slots
        input_ids[query_positions] = keys
        if self.random_non_queries:
            # Zoology replaces every 0 (only fillers are 0: keys start at 1) by a uniform id.
            fill = input_ids == 0
            input_ids[fill] = rng.integers(0, self.vocab_size, size=int(fill.sum()))

        labels = np.full(self.seq_len, IGNORE_INDEX, dtype=np.int64)
        labels[query_positions] = values
        meta = {
            "num_kv_pairs": k,
            "query_positions": np.sort(query_positions),
            "keys": keys.astype(np.int64),
            "values": values.astype(np.int64),
        }
        return TaskExample(input_ids, labels, meta)
