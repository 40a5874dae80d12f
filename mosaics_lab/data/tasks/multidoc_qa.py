"""Multi-document QA with distractors (synthetic, in the style of RULER's key-value retrieval).

One example is ``num_docs`` documents, each binding a key to a value,

    DOC k_1 .. k_K COLON v_1 .. v_V END          (K = key_len, V = value_len)

followed by the question and its answer

    Q k_1 .. k_K QMARK v_1 .. v_V

All keys of an example are distinct (distractor keys differ from the gold key as whole keys; they
may share single tokens with it, so matching the whole key is needed). Exactly one document, the
gold one, holds the queried key; it sits at a uniformly random depth, or at ``gold_depth`` (a
fraction of the documents, 0 = first, 1 = last) for needle-depth sweeps. Values are drawn
independently (two documents may share a value). The targets are the answer tokens: labels sit at
the positions of QMARK, v_1, .., v_{V-1} (the prediction made after each); the last position has
none. Metric: exact match (every answer token right under teacher-forced argmax).

Context-length extrapolation: ``with_context_length`` and ``scaled`` return a config of the same
task with more documents, e.g. ``task.scaled(k)`` for k in 1, 2, 4, 8.

Token ids: DOC, COLON, END, Q, QMARK = 0 .. 4, keys 5 .. 5 + key_vocab - 1, values after the keys.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from mosaics_lab.data.tasks.base import IGNORE_INDEX, SyntheticTask, TaskExample, check_float, check_int

DOC, COLON, END, QUESTION, QMARK = 0, 1, 2, 3, 4
NUM_SPECIAL = 5


@dataclasses.dataclass
class MultiDocQA(SyntheticTask):
    """Key-value documents with distractors and one question; metric: exact match on the answer."""

    name: ClassVar[str] = "multidoc_qa"

    num_docs: int = 32
    key_len: int = 2
    value_len: int = 2
    key_vocab: int = 64
    value_vocab: int = 64
    gold_depth: float | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_int(owner, "num_docs", self.num_docs, min_value=1)
        check_int(owner, "key_len", self.key_len, min_value=1)
        check_int(owner, "value_len", self.value_len, min_value=1)
        check_int(owner, "key_vocab", self.key_vocab, min_value=2)
        check_int(owner, "value_vocab", self.value_vocab, min_value=1)
        if self.key_vocab**self.key_len > 2**62:
            raise ValueError(
                f"{owner}.key_len={self.key_len} with key_vocab={self.key_vocab} gives too many keys"
            )
        if self.num_docs > self.key_vocab**self.key_len:
            raise ValueError(
                f"{owner}.num_docs={self.num_docs} needs that many distinct keys but key_vocab**key_len = "
                f"{self.key_vocab**self.key_len}; raise key_vocab or key_len"
            )
        if self.gold_depth is not None:
            check_float(owner, "gold_depth", self.gold_depth, min_value=0.0, max_value=1.0)

    @property
    def doc_len(self) -> int:
        return self.key_len + self.value_len + 3

    @property
    def question_len(self) -> int:
        return self.key_len + self.value_len + 2

    @property
    def seq_len(self) -> int:
        return self.num_docs * self.doc_len + self.question_len

    @property
    def vocab_size(self) -> int:
        return NUM_SPECIAL + self.key_vocab + self.value_vocab

    def with_context_length(self, context_len: int) -> MultiDocQA:
        """The same task with as many documents as fit in ``context_len`` tokens (question included)."""
        check_int(type(self).__name__, "context_len", context_len, min_value=self.doc_len + self.question_len)
        return dataclasses.replace(self, num_docs=(context_len - self.question_len) // self.doc_len)

    def scaled(self, factor: int) -> MultiDocQA:
        """The same task with ``factor`` times the documents (about ``factor`` times the length)."""
        check_int(type(self).__name__, "factor", factor, min_value=1)
        return dataclasses.replace(self, num_docs=self.num_docs * factor)

    def example(self, rng: np.random.Generator) -> TaskExample:
        n, k, v = self.num_docs, self.key_len, self.value_len
        # Distinct keys: draw distinct integers in [0, key_vocab**K) and write them in base key_vocab.
        codes = rng.choice(self.key_vocab**k, size=n, replace=False)
        digits = (codes[:, None] // self.key_vocab ** np.arange(k - 1, -1, -1)) % self.key_vocab
        keys = NUM_SPECIAL + digits.astype(np.int64)  # (n, K)
        values = NUM_SPECIAL + self.key_vocab + rng.integers(0, self.value_vocab, size=(n, v))  # (n, V)
        if self.gold_depth is None:
            gold = int(rng.integers(n))
        else:
            gold = int(round(self.gold_depth * (n - 1)))

        docs = np.empty((n, self.doc_len), dtype=np.int64)
        docs[:, 0] = DOC
        docs[:, 1 : 1 + k] = keys
        docs[:, 1 + k] = COLON
        docs[:, 2 + k : 2 + k + v] = values
        docs[:, -1] = END
        question = np.concatenate([[QUESTION], keys[gold], [QMARK], values[gold]]).astype(np.int64)
        input_ids = np.concatenate([docs.reshape(-1), question])

        labels = np.full(self.seq_len, IGNORE_INDEX, dtype=np.int64)
        qmark = n * self.doc_len + k + 1
        labels[qmark : qmark + v] = values[gold]
        meta = {
            "num_docs": n,
            "gold_index": gold,
            "gold_depth": gold / max(n - 1, 1),
            "answer_positions": np.arange(qmark, qmark + v),
            "context_len": self.seq_len,
        }
        return TaskExample(input_ids, labels, meta)
