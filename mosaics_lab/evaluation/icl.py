"""In-context learning evaluators: one per synthetic task of ``mosaics_lab.data.tasks``.

Each evaluator draws examples from the task's ``test`` split (disjoint seed streams, and for
RegBench disjoint languages, from what training saw), runs the model on them in batches, greedy
(argmax) and teacher-forced, and accumulates the task's metric with the torchmetrics accumulators
of ``metrics``:

    task          metric                          swept over (TensorBoard step)
    mqar          accuracy at the query positions -
    regbench      accuracy, TVD (see metrics.py)  -
    manyshot      query accuracy                  shots (--shots)
    multidoc_qa   exact match (+ token accuracy)  context length in tokens (--lengths)
    induction     accuracy at the last position   sequence length in tokens (--lengths)

Sweeps over length use the task's own knob (``MultiDocQA.scaled`` / ``with_context_length``,
``Induction.with_seq_len``), with the task's configured length as 1x. A length the model cannot run
at (gpt2 beyond its learned positions) is reported as "n/a" with the model's reason, not an error.

``chance`` (in the points or ``info``) is the accuracy of guessing uniformly among the answers the
prompt makes plausible: one of the K bound values (mqar), one of the classes' labels (manyshot), one
of the ordinary tokens (induction), one document's value (multidoc_qa). RegBench has none (its
accuracy counts any legal symbol).

Shape letters: B = batch, T = example length, V = the model's vocabulary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torchmetrics import Metric

from mosaics_lab.data.tasks import (
    Induction,
    ManyShot,
    MultiDocQA,
    RegBench,
    SyntheticTask,
    TaskExample,
)
from mosaics_lab.evaluation.common import (
    EvalError,
    EvalResult,
    LengthSpec,
    Progress,
    batched,
    check_positive,
    collate_examples,
    finite_or_none,
    forward_logits,
    length_limit,
)
from mosaics_lab.evaluation.metrics import ExactMatch, MaskedAccuracy, RegBenchScore, regbench_targets

DEFAULT_LENGTHS = "1x,2x,4x,8x"
DEFAULT_SHOTS = "1,2,4,8,16"
SPLIT = "test"


@dataclasses.dataclass
class TaskEvalOptions:
    """How many examples, from which seed stream, and which sweep points."""

    batches: int = 16
    batch_size: int = 16
    seed: int = 0
    lengths: Sequence[LengthSpec] = ()
    shots: Sequence[int] = ()
    split: str = SPLIT
    progress: Progress | None = None  # ticked once per scored batch

    def __post_init__(self) -> None:
        check_positive("--batches", self.batches)
        check_positive("--batch-size", self.batch_size)

    @property
    def num_examples(self) -> int:
        return self.batches * self.batch_size


@dataclasses.dataclass
class Variant:
    """One sweep point: its axis value, the task config evaluated there, and descriptive keys."""

    value: int | None
    task: SyntheticTask
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def eval_examples(task: SyntheticTask, options: TaskEvalOptions) -> list[TaskExample]:
    """The examples an evaluator scores at ``task``: the first ``batches * batch_size`` of the split."""
    return list(task.examples(options.split, options.num_examples, options.seed))


def model_vocab_size(model: nn.Module) -> int:
    """V, read from the logits of a one-token forward (works for any model of the table or a fake)."""
    return int(forward_logits(model, torch.zeros(1, 1, dtype=torch.long)).shape[-1])


def check_vocab(task: SyntheticTask, vocab_size: int) -> None:
    if task.vocab_size > vocab_size:
        raise EvalError(
            f"task {task.name!r} uses token ids 0 .. {task.vocab_size - 1} but the model has {vocab_size} "
            f"logits; evaluate a run trained on {task.name!r}, or shrink the task with --task-arg "
            "(e.g. vocab_size=... for mqar / induction)"
        )


def _accumulate(
    model: nn.Module,
    examples: Sequence[TaskExample],
    batch_size: int,
    metrics: dict[str, Metric],
    update: Callable[[str, Metric, torch.Tensor, dict[str, Any], list[TaskExample]], None] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run ``model`` over ``examples`` in batches; each metric is updated with (logits, labels) unless
    ``update`` is given. Returns the computed values."""
    for chunk in batched(examples, batch_size):
        batch = collate_examples(chunk)
        logits = forward_logits(model, batch["input_ids"])  # (B, T, V)
        for name, metric in metrics.items():
            if update is None:
                metric.update(logits, batch["labels"])
            else:
                update(name, metric, logits, batch, chunk)
        if progress is not None:
            progress.update(1)
    return {name: metric.compute() for name, metric in metrics.items()}


# --- the variants each task is evaluated at -----------------------------------------------------------


def variants(task: SyntheticTask, options: TaskEvalOptions) -> list[Variant]:
    """The sweep points of ``task`` under ``options`` (one point, value None, for unswept tasks)."""
    if isinstance(task, ManyShot):
        if not options.shots:
            raise EvalError("manyshot needs --shots (e.g. 1,2,4,8,16)")
        return [
            Variant(
                k, dataclasses.replace(task, num_shots=k, label_shots=False), {"chance": 1 / task.num_classes}
            )
            for k in options.shots
        ]
    if isinstance(task, (MultiDocQA, Induction)):
        if not options.lengths:
            raise EvalError(f"{task.name} needs --lengths (e.g. {DEFAULT_LENGTHS})")
        out = []
        for spec in options.lengths:
            variant = _at_length(task, spec)
            extra = {"label": spec.text, "factor": spec.factor}
            if isinstance(variant, MultiDocQA):
                extra.update(num_docs=variant.num_docs, chance=1 / variant.num_docs)
            else:
                extra["chance"] = 1 / (variant.vocab_size - 1)
            out.append(Variant(variant.seq_len, variant, extra))
        return out
    return [Variant(None, task)]


def _at_length(task: MultiDocQA | Induction, spec: LengthSpec) -> SyntheticTask:
    try:
        if isinstance(task, MultiDocQA):
            return task.scaled(spec.factor) if spec.factor else task.with_context_length(spec.tokens)
        return task.with_seq_len(spec.resolve(task.seq_len))
    except ValueError as exc:
        raise EvalError(f"--lengths {spec.text}: {exc}") from exc


# --- evaluators ---------------------------------------------------------------------------------------


def _single_point(model: nn.Module, task: SyntheticTask) -> None:
    reason = length_limit(model, task.seq_len)
    if reason is not None:
        raise EvalError(
            f"the model cannot run {task.name} examples of {task.seq_len} tokens ({reason}); "
            "evaluate at a length it supports with --task-arg seq_len=..."
        )


def evaluate_mqar(model: nn.Module, task: SyntheticTask, options: TaskEvalOptions) -> EvalResult:
    _single_point(model, task)
    examples = eval_examples(task, options)
    out = _accumulate(
        model, examples, options.batch_size, {"accuracy": MaskedAccuracy()}, progress=options.progress
    )
    accuracy = finite_or_none(out["accuracy"])
    return EvalResult(
        metrics={"accuracy": accuracy},
        info={"num_examples": len(examples), "chance": 1 / task.num_kv_pairs},
    )


def evaluate_regbench(model: nn.Module, task: RegBench, options: TaskEvalOptions) -> EvalResult:
    _single_point(model, task)
    vocab_size = model_vocab_size(model)
    examples = eval_examples(task, options)

    def update(name: str, metric: Metric, logits: torch.Tensor, batch: dict, chunk: list) -> None:
        targets = regbench_targets(chunk, vocab_size)
        metric.update(logits, targets.legal_next_mask, targets.score_mask, targets.support_mask)

    out = _accumulate(
        model, examples, options.batch_size, {"score": RegBenchScore()}, update, options.progress
    )
    return EvalResult(
        metrics={
            "accuracy": finite_or_none(out["score"]["accuracy"]),
            "tvd": finite_or_none(out["score"]["tvd"]),
        },
        info={"num_examples": len(examples), "num_train_languages": task.num_train_languages},
    )


def _sweep(
    model: nn.Module,
    task: SyntheticTask,
    options: TaskEvalOptions,
    axis: str,
    make_metrics: Callable[[], dict[str, Metric]],
    check_length: bool,
) -> EvalResult:
    points = []
    for variant in variants(task, options):
        point: dict[str, Any] = {axis: variant.value, **variant.extra}
        reason = length_limit(model, variant.task.seq_len) if check_length else None
        if reason is not None:
            names = list(make_metrics())
            points.append({**point, "status": "n/a", "reason": reason, "metrics": dict.fromkeys(names)})
            continue
        examples = eval_examples(variant.task, options)
        out = _accumulate(model, examples, options.batch_size, make_metrics(), progress=options.progress)
        metrics = {name: finite_or_none(value) for name, value in out.items()}
        points.append({**point, "status": "ok", "num_examples": len(examples), "metrics": metrics})
    ran = [p[axis] for p in points if p["status"] == "ok"]
    info = {f"longest_{axis}": ran[-1] if ran else None}
    return EvalResult(axis=axis, points=points, metrics=_sweep_headline(points, axis, task), info=info)


def _sweep_headline(points: list[dict[str, Any]], axis: str, task: SyntheticTask) -> dict[str, float | None]:
    """Summary scalars of a sweep, for tables: the first and last point that ran, and the
    configured (1x) length when it was evaluated."""
    ran = [p for p in points if p["status"] == "ok"]
    headline: dict[str, float | None] = {}
    if not ran:
        return headline
    main = next(iter(ran[0]["metrics"]))
    first, last = ran[0], ran[-1]
    if axis == "shots":
        headline[f"{main}_at_{first[axis]}_shots"] = first["metrics"][main]
        headline[f"{main}_at_{last[axis]}_shots"] = last["metrics"][main]
    else:
        at_train = [p for p in ran if p[axis] == task.seq_len]
        if at_train:
            headline[f"{main}_at_1x"] = at_train[0]["metrics"][main]
        headline[f"{main}_at_longest"] = last["metrics"][main]
    return headline


def evaluate_manyshot(model: nn.Module, task: ManyShot, options: TaskEvalOptions) -> EvalResult:
    return _sweep(model, task, options, "shots", lambda: {"accuracy": MaskedAccuracy()}, check_length=True)


def evaluate_multidoc_qa(model: nn.Module, task: MultiDocQA, options: TaskEvalOptions) -> EvalResult:
    def make() -> dict[str, Metric]:
        return {"exact_match": ExactMatch(), "token_accuracy": MaskedAccuracy()}

    return _sweep(model, task, options, "length", make, check_length=True)


def evaluate_induction(model: nn.Module, task: Induction, options: TaskEvalOptions) -> EvalResult:
    return _sweep(model, task, options, "length", lambda: {"accuracy": MaskedAccuracy()}, check_length=True)


TASK_EVALUATORS: dict[str, Callable[[nn.Module, Any, TaskEvalOptions], EvalResult]] = {
    "mqar": evaluate_mqar,
    "regbench": evaluate_regbench,
    "manyshot": evaluate_manyshot,
    "multidoc_qa": evaluate_multidoc_qa,
    "induction": evaluate_induction,
}


def evaluate_task(model: nn.Module, task: SyntheticTask, options: TaskEvalOptions) -> EvalResult:
    """Evaluate ``model`` (eval mode) on ``task``'s test split; see the module docstring."""
    if task.name not in TASK_EVALUATORS:
        raise EvalError(f"no evaluator for task {task.name!r}; known: {sorted(TASK_EVALUATORS)}")
    model.eval()
    vocab_size = model_vocab_size(model)
    for variant in variants(task, options):  # before any work: a bad config fails fast
        check_vocab(variant.task, vocab_size)
    result = TASK_EVALUATORS[task.name](model, task, options)
    result.info.setdefault("task_config", dataclasses.asdict(task))
    result.info.setdefault("split", options.split)
    result.info.setdefault("seed", options.seed)
    return result
