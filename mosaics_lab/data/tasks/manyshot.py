"""Many-shot classification with anonymous labels (synthetic, in the spirit of Memory Mosaics v2).

Everything a prompt's answer depends on is drawn per prompt, so it can only be learnt in context:
- classes: the pattern vocabulary is randomly split into ``num_classes`` disjoint sub-vocabularies,
  and class c gets a prototype of ``pattern_len`` tokens drawn from sub-vocabulary c;
- instances: a copy of the prototype where each token is, with probability ``noise``, resampled
  uniformly from the whole pattern vocabulary;
- labels: ``num_classes`` distinct label tokens drawn from a pool of ``num_labels`` in random order,
  i.e. a random injective class -> label map (anonymous labels: no label token means anything).

Layout: ``num_shots`` rounds, each holding one instance of every class in random order, each
instance written ``x_1 .. x_P ARROW label``; then the query ``x_1 .. x_P ARROW`` of a uniformly drawn
class. The query label is the target of the final position (the prediction made after reading the
query's ARROW). With ``label_shots`` the shots' label tokens are targets too (at their ARROWs), a
training signal; evaluation uses ``batch_for_shots``, which labels the query only, so plain masked
accuracy is query accuracy. Accuracy as a function of the number of shots is the measurement.

Token ids: pattern tokens 0 .. pattern_vocab - 1, labels pattern_vocab .. pattern_vocab + num_labels - 1,
ARROW last.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

from mosaics_lab.data.tasks.base import (
    IGNORE_INDEX,
    SyntheticTask,
    TaskExample,
    check_bool,
    check_float,
    check_int,
    collate,
)


@dataclasses.dataclass
class ManyShot(SyntheticTask):
    """Anonymous-label classification with ``num_shots`` rounds of demonstrations; metric: query accuracy."""

    name: ClassVar[str] = "manyshot"

    num_classes: int = 4
    num_shots: int = 4
    pattern_len: int = 8
    noise: float = 0.6
    pattern_vocab: int = 64
    num_labels: int = 16
    label_shots: bool = True

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_int(owner, "num_classes", self.num_classes, min_value=2)
        check_int(owner, "num_shots", self.num_shots, min_value=0)
        check_int(owner, "pattern_len", self.pattern_len, min_value=1)
        check_float(owner, "noise", self.noise, min_value=0.0, max_value=1.0)
        # Each class needs a non-empty sub-vocabulary of its own.
        check_int(owner, "pattern_vocab", self.pattern_vocab, min_value=self.num_classes)
        check_int(owner, "num_labels", self.num_labels, min_value=self.num_classes)
        check_bool(owner, "label_shots", self.label_shots)

    @property
    def arrow_id(self) -> int:
        return self.pattern_vocab + self.num_labels

    @property
    def vocab_size(self) -> int:
        return self.pattern_vocab + self.num_labels + 1

    @property
    def seq_len(self) -> int:
        item = self.pattern_len + 2  # pattern, ARROW, label
        return self.num_shots * self.num_classes * item + self.pattern_len + 1

    def example(self, rng: np.random.Generator) -> TaskExample:
        c, p = self.num_classes, self.pattern_len
        sub_vocabs = np.array_split(rng.permutation(self.pattern_vocab), c)
        prototypes = np.stack([rng.choice(sub, size=p) for sub in sub_vocabs])  # (C, P)
        class_to_label = self.pattern_vocab + rng.choice(self.num_labels, size=c, replace=False)

        def instance(cls: int) -> np.ndarray:
            resample = rng.random(p) < self.noise
            tokens = prototypes[cls].copy()
            tokens[resample] = rng.integers(0, self.pattern_vocab, size=int(resample.sum()))
            return tokens

        shot_classes = np.concatenate([rng.permutation(c) for _ in range(self.num_shots)]).astype(np.int64)
        query_class = int(rng.integers(c))

        input_ids = np.empty(self.seq_len, dtype=np.int64)
        labels = np.full(self.seq_len, IGNORE_INDEX, dtype=np.int64)
        arrow_positions = []
        pos = 0
        for cls in shot_classes:
            input_ids[pos : pos + p] = instance(int(cls))
            input_ids[pos + p] = self.arrow_id
            input_ids[pos + p + 1] = class_to_label[cls]
            if self.label_shots:
                labels[pos + p] = class_to_label[cls]
            arrow_positions.append(pos + p)
            pos += p + 2
        input_ids[pos : pos + p] = instance(query_class)
        input_ids[pos + p] = self.arrow_id
        query_position = pos + p
        labels[query_position] = class_to_label[query_class]

        meta = {
            "num_shots": self.num_shots,
            "class_to_label": class_to_label.astype(np.int64),
            "shot_classes": shot_classes,
            "shot_arrow_positions": np.asarray(arrow_positions, dtype=np.int64),
            "query_class": query_class,
            "query_position": query_position,
            "prototypes": prototypes.astype(np.int64),
        }
        return TaskExample(input_ids, labels, meta)

    def batch_for_shots(
        self, num_shots: int, batch_size: int, seed: int, split: str = "test"
    ) -> dict[str, Any]:
        """A collated batch with ``num_shots`` rounds, labelled at the query only (for accuracy-vs-shots).

        Sweeping ``num_shots`` in {1, 2, 4, 8, 16} with one seed evaluates every shot count on its own
        prompts; the examples are deterministic in (num_shots, seed, split).
        """
        task = dataclasses.replace(self, num_shots=num_shots, label_shots=False)
        return collate(list(task.examples(split, batch_size, seed)))
