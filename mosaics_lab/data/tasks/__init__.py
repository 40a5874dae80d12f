"""Synthetic in-context learning tasks: a name -> task class table and ``get_task``.

    task = get_task("mqar", num_kv_pairs=8)
    batch = task.batch("train", n=32, seed=0)     # {"input_ids": (B, L), "labels": (B, L), "meta": [...]}

Every task is a dataclass config validated on construction (``ValueError`` naming the field); see
``base.SyntheticTask`` for the interface and each module's docstring for the task's specification.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mosaics_lab.data.tasks.base import (
    IGNORE_INDEX,
    SPLIT_KEYS,
    SyntheticTask,
    TaskExample,
    collate,
    example_rng,
    nearest,
)
from mosaics_lab.data.tasks.induction import Induction
from mosaics_lab.data.tasks.manyshot import ManyShot
from mosaics_lab.data.tasks.mqar import MQAR
from mosaics_lab.data.tasks.multidoc_qa import MultiDocQA
from mosaics_lab.data.tasks.regbench import Automaton, RegBench

TASKS: dict[str, type[SyntheticTask]] = {
    cls.name: cls for cls in (MQAR, RegBench, ManyShot, MultiDocQA, Induction)
}


def get_task(name: str, **kwargs: Any) -> SyntheticTask:
    """Build task ``name`` from keyword fields; ValueError naming the nearest valid name or field."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}{nearest(name, list(TASKS))}; valid tasks: {sorted(TASKS)}")
    cls = TASKS[name]
    fields = [f.name for f in dataclasses.fields(cls)]
    for key in kwargs:
        if key not in fields:
            raise ValueError(
                f"unknown field {key!r} for task {name!r}{nearest(key, fields)}; valid fields: {fields}"
            )
    return cls(**kwargs)


__all__ = [
    "IGNORE_INDEX",
    "SPLIT_KEYS",
    "TASKS",
    "Automaton",
    "Induction",
    "MQAR",
    "ManyShot",
    "MultiDocQA",
    "RegBench",
    "SyntheticTask",
    "TaskExample",
    "collate",
    "example_rng",
    "get_task",
]
