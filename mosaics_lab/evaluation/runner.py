"""``evaluate(run_or_checkpoint, task)``: load a trained model, run one evaluator, and record the result
in the run: ``<run>/eval/<task>.json``, ``<run>/eval/<task>.png`` and TensorBoard scalars.

Tasks (``EVAL_TASKS``):
- ``val``: loss and perplexity on the run's own validation split.
- ``per_position``: per-position loss over validation windows of the training length, and its
  late-context summary (``lm``): the in-context gain, mean loss at positions 32-63 minus mean loss
  over the last quarter, and the slope of the loss per doubling of the context from position 32 on.
- ``extrapolation``: per-position loss at ``--lengths`` (default 1x,2x,4x,8x the training length)
  on the run's validation split; needs a token-stream dataset (text, stories).
- ``mqar``, ``regbench``, ``manyshot``, ``multidoc_qa``, ``induction``: the synthetic in-context tasks
  (``icl``), on their test split.

Ablation (``ablate``, CLI ``--ablate ltm|stm``): a mosaic_v2 model evaluated with one contextual memory
removed, without retraining: that memory contributes exactly zero in every block
(``models.ablation.ablated``, whose docstring gives the definition; the v2 paper: without its LTM,
long-context QA collapses while short tasks do not). The result is another evaluation, named
``<task>-no_<memory>`` (``eval_name``): ``eval/<task>-no_ltm.json`` and ``.png``, TensorBoard
``eval/<task>-no_ltm/<metric>``, so an ablated and a full evaluation never overwrite each other; the
JSON records ``"ablate": "ltm"`` (null for the full model). Ablated results are no HPARAMS columns.

Task configuration: when the run was trained on the task (``data.generate`` names it), the task is
built from the run's ``data.generate_args`` (the same config, scored on the test split, seeded with
``data.seed``); otherwise from the task's own defaults (``mosaics_lab.data.tasks``). ``task_args``
(CLI: ``--task-arg key=value``) override fields either way. The JSON records the config used and its
source ("recipe" or "defaults").

TensorBoard: ``eval/<task>/<metric>`` in the run directory. Swept metrics use the axis value as the
step (tokens for lengths, shots, the position for per-position loss); headline scalars of an
unswept task (and summaries such as the in-context gain) use the checkpoint's global step.
Re-evaluating appends another event file; TensorBoard shows the latest value at each step.

HPARAMS: the headline metrics that are columns of every run's hparams experiment config
(``constants.HP_EVAL_METRICS``, listed at training) are also written as ``hp/<task>/<metric>`` at the
checkpoint's global step, so the HPARAMS tab shows them beside ``hp/val_loss`` and sorts runs by them.
A swept task's columns are points of its sweep, ``<metric>@<point>``: ``hp/extrapolation/loss@4x``
(the point at 4x the training length; a length given in tokens is no column), ``hp/manyshot/
accuracy@16-shot``. ``hparams_metrics`` picks them from a result.

The JSON record (``RESULT_VERSION`` 2)::

    {"version": 2, "task": "induction", "name": "induction", "ablate": null,  # name: eval_name(task, ablate)
     "run_dir": "...", "checkpoint": ".../last.ckpt", "which": "last",
     "global_step": 300, "recipe": "icl_induction_llama", "arch": "llama", "params": 99776, "device": "cpu",
     "options": {"batches": 16, "batch_size": 16, "lengths": "1x,2x,4x,8x", "shots": null, "seed": 0,
                 "task_args": {}},
     "task_config_source": "recipe",                  # synthetic tasks: recipe | defaults (+task-args)
     "metrics": {"accuracy_at_1x": 0.98, "accuracy_at_longest": 0.41},      # headline scalars
     "axis": "length",                                # length | shots | position | null
     "points": [{"length": 128, "label": "1x", "factor": 1, "chance": 0.067, "status": "ok",
                 "num_examples": 256, "metrics": {"accuracy": 0.98}},
                {"length": 1024, "label": "8x", ..., "status": "n/a", "reason": "<the model's error>",
                 "metrics": {"accuracy": null}}],
     "curves": {"<name>": [float | null, ...]},       # per-position losses, per-window val losses
     "info": {"task_config": {...}, "num_examples": 256, "longest_length": 1024, ...,
              "definitions": {"in_context_gain": "<in words>", ...}},   # per_position, extrapolation
     "wall_time_s": 3.2, "created": "2026-...", "files": {"json": "...", "png": "..."}}

Missing values (n/a points, NaN) are null: JSON has no NaN.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from mosaics_lab import constants as C
from mosaics_lab.config.schema import Recipe
from mosaics_lab.data.prepare import FORMAT_TOKENS, TASK_DEFAULTS
from mosaics_lab.data.tasks import TASKS, get_task, nearest
from mosaics_lab.evaluation import EVAL_TASKS, LM_TASKS
from mosaics_lab.evaluation.common import (
    DocumentMasked,
    EvalError,
    EvalResult,
    LengthSpec,
    parse_lengths,
    parse_shots,
    progress_bar,
)
from mosaics_lab.evaluation.icl import (
    DEFAULT_LENGTHS,
    DEFAULT_SHOTS,
    TaskEvalOptions,
    evaluate_task,
    variants,
)
from mosaics_lab.evaluation.lm import evaluate_extrapolation, evaluate_per_position, evaluate_val
from mosaics_lab.evaluation.plots import plot_result
from mosaics_lab.models.ablation import ABLATABLE_MEMORIES, ablatable_blocks, ablated

EVAL_DIR = "eval"
CHECKPOINT_CHOICES = ("last", "best")
# 2: per_position's in-context gain measures the late context (positions 32-63 against the last
# quarter, and a slope per doubling), replacing loss_first_positions; "name" and "ablate" added.
RESULT_VERSION = 2


def check_task_name(task: str) -> None:
    if task not in EVAL_TASKS:
        raise EvalError(
            f"unknown --task {task!r}{nearest(task, EVAL_TASKS)}; valid tasks: {', '.join(EVAL_TASKS)}"
        )


@dataclasses.dataclass
class EvalOptions:
    """Everything ``evaluate`` takes besides the run and the task (the CLI's options)."""

    lengths: str = DEFAULT_LENGTHS
    shots: str = DEFAULT_SHOTS
    batches: int = 16
    batch_size: int = 16
    which: str = "last"
    device: str = "cpu"
    seed: int | None = None  # None: the run's data.seed
    task_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    out_dir: str | Path | None = None  # None: <run>/eval
    tensorboard: bool = True
    progress: bool = True  # a tqdm bar over (points x batches) on stderr; the CLI's --quiet turns it off
    ablate: str | None = None  # "ltm" | "stm": evaluate with that memory removed (mosaic_v2 only)


def eval_name(task: str, ablate: str | None = None) -> str:
    """What an evaluation's files and TensorBoard tags are named: the task, ``<task>-no_<memory>``
    with a memory removed."""
    return task if ablate is None else f"{task}-no_{ablate}"


def check_ablation_name(ablate: str | None) -> None:
    if ablate is not None and ablate not in ABLATABLE_MEMORIES:
        raise EvalError(
            f"unknown --ablate {ablate!r}{nearest(ablate, ABLATABLE_MEMORIES)}; the memories a mosaic_v2 "
            f"model can do without: {', '.join(ABLATABLE_MEMORIES)}"
        )


def _check_ablatable(model: torch.nn.Module, ablate: str | None, arch: str) -> None:
    if ablate is None:
        return
    try:
        ablatable_blocks(model, ablate)
    except ValueError as exc:
        raise EvalError(
            f"--ablate {ablate}: this run's model is {arch}, and {exc}; evaluate it without --ablate"
        ) from exc


# --- resolving the run ----------------------------------------------------------------------------------


def _run_dir_of(path: Path, ckpt: Path) -> Path:
    """The run directory of ``path`` (a run dir, or a checkpoint inside one); a loose checkpoint's folder."""
    if path.is_dir() and path != ckpt:  # (a sharded FSDP checkpoint is a directory too)
        return path
    candidate = ckpt.parent.parent
    if ckpt.parent.name == C.CHECKPOINT_DIR and (candidate / C.RECIPE_FILE).is_file():
        return candidate
    return ckpt.parent


def _global_step(ckpt: Path) -> int:
    if ckpt.is_dir():  # a sharded (FSDP) checkpoint keeps the step in Lightning's metadata file
        from lightning.fabric.utilities.load import _METADATA_FILENAME

        ckpt = ckpt / _METADATA_FILENAME
    from mosaics_lab.training.safe_load import load_checkpoint_file

    # mmap: only the small "global_step" entry is read, not the weights again; weights-only, always.
    return int(load_checkpoint_file(ckpt, map_location="cpu", mmap=True).get("global_step", 0))


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise EvalError(f"--device {name!r} is not a torch device ({exc}); use cpu, cuda or cuda:0") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EvalError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def task_from_recipe(recipe: Recipe, name: str, overrides: dict[str, Any]) -> tuple[Any, str]:
    """The task config to evaluate: the run's own when it trained on ``name``, else the defaults."""
    args: dict[str, Any] = {}
    source = "defaults"
    if recipe.data.generate == name:
        args = {k: v for k, v in dict(recipe.data.generate_args).items() if k not in TASK_DEFAULTS}
        source = "recipe"
    if overrides:
        args.update(overrides)
        source += "+task-args"
    try:
        return get_task(name, **args), source
    except (ValueError, TypeError) as exc:
        raise EvalError(f"task {name!r} with {args}: {exc}") from exc


# --- data for the language-modelling evaluators ------------------------------------------------------


def _val_data(
    recipe: Recipe, block_size: int, batch_size: int
) -> tuple[Iterable[dict], str, int | None, int | None]:
    """The run's validation loader (windows of ``block_size`` tokens, or the task's examples), its
    format, the example length of an examples dataset, and the data's <|eot|> id (or None)."""
    from mosaics_lab.data import LMDataModule

    data = LMDataModule(recipe.data, block_size, batch_size, recipe.seed)
    data.prepare_data()  # regenerates a synthetic dataset that is gone (deterministic in the recipe)
    data.setup("validate")  # refuses data.document_mask on data without <|eot|>
    seq_len = data.manifest.get("seq_len") if data.format != FORMAT_TOKENS else None
    return data.val_dataloader(), data.format, seq_len, data.eot_id


def _evaluate_lm(
    task: str,
    recipe: Recipe,
    model: torch.nn.Module,
    options: EvalOptions,
    lengths: Sequence[LengthSpec],
    progress: Any = None,
) -> EvalResult:
    block = recipe.model.block_size
    batches, fmt, seq_len, eot_id = _val_data(recipe, block, options.batch_size)
    if recipe.data.document_mask:
        # Evaluated as it trained: every position sees only its own document.
        model = DocumentMasked(model, eot_id)
    if task == "val":
        return evaluate_val(model, batches, options.batches, progress)
    if task == "per_position":
        return evaluate_per_position(model, batches, seq_len or block, options.batches, progress)
    if fmt != FORMAT_TOKENS:
        raise EvalError(
            f"extrapolation reads longer windows of a token stream, but this run trained on "
            f"{recipe.data.generate!r} task examples of fixed length; use --task induction or "
            "--task multidoc_qa with --lengths for task length sweeps"
        )
    return evaluate_extrapolation(
        model,
        lambda length: _val_data(recipe, length, options.batch_size)[0],
        block,
        lengths,
        options.batches,
        progress,
    )


# --- the entry point -----------------------------------------------------------------------------------


def evaluate(path: str | Path, task: str, options: EvalOptions | None = None) -> dict[str, Any]:
    """Evaluate the run (or checkpoint) at ``path`` on ``task``; write JSON, PNG and TensorBoard;
    return the JSON record (format: the module docstring)."""
    from mosaics_lab.training.checkpoint import find_checkpoint, load_trained

    options = options or EvalOptions()
    check_task_name(task)  # user mistakes first, before any loading
    if options.which not in CHECKPOINT_CHOICES:
        raise EvalError(f"--which must be one of {', '.join(CHECKPOINT_CHOICES)}, got {options.which!r}")
    if options.batches < 1 or options.batch_size < 1:
        raise EvalError(
            f"--batches and --batch-size must be >= 1, got {options.batches} and {options.batch_size}"
        )
    lengths = parse_lengths(options.lengths)
    shots = parse_shots(options.shots)
    task_options = TaskEvalOptions(
        batches=options.batches, batch_size=options.batch_size, lengths=lengths, shots=shots
    )
    if options.task_args and task in LM_TASKS:
        raise EvalError(f"--task-arg is for the synthetic tasks ({', '.join(TASKS)}), not {task!r}")
    check_ablation_name(options.ablate)
    device = _device(options.device)

    path = Path(path)
    ckpt = find_checkpoint(path, options.which)
    recipe, model = load_trained(ckpt, map_location="cpu")
    model = model.to(device).eval()
    _check_ablatable(model, options.ablate, recipe.model.arch)
    run_dir = _run_dir_of(path, ckpt)
    step = _global_step(ckpt)
    name = eval_name(task, options.ablate)

    started = time.time()
    record_task: dict[str, Any] = {}
    with ablated(model, options.ablate):
        if task in LM_TASKS:
            points = len(lengths) if task == "extrapolation" else 1
            with progress_bar(points * options.batches, f"eval {name}", options.progress) as bar:
                result = _evaluate_lm(task, recipe, model, options, lengths, bar)
        else:
            task_cfg, source = task_from_recipe(recipe, task, options.task_args)
            task_options.seed = recipe.data.seed if options.seed is None else options.seed
            points = len(variants(task_cfg, task_options))
            with progress_bar(points * options.batches, f"eval {name}", options.progress) as bar:
                task_options.progress = bar
                result = evaluate_task(model, task_cfg, task_options)
            record_task = {"task_config_source": source}
    wall = time.time() - started

    record = {
        "version": RESULT_VERSION,
        "task": task,
        "name": name,
        "ablate": options.ablate,
        "run_dir": str(run_dir),
        "checkpoint": str(ckpt),
        "which": options.which,
        "global_step": step,
        "recipe": recipe.name,
        "arch": recipe.model.arch,
        "params": model.num_params() if hasattr(model, "num_params") else None,
        "device": str(device),
        "options": {
            "batches": options.batches,
            "batch_size": options.batch_size,
            "lengths": options.lengths if result.axis == "length" else None,
            "shots": options.shots if result.axis == "shots" else None,
            "seed": task_options.seed if task not in LM_TASKS else None,
            "task_args": options.task_args,
        },
        **record_task,
        "metrics": result.metrics,
        "axis": result.axis,
        "points": result.points,
        "curves": result.curves,
        "info": result.info,
        "wall_time_s": round(wall, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out_dir = Path(options.out_dir) if options.out_dir is not None else run_dir / EVAL_DIR
    record["files"] = {"json": str(out_dir / f"{name}.json"), "png": str(out_dir / f"{name}.png")}
    from mosaics_lab.training.run import tensorboard_dir

    write_outputs(record, result, out_dir, tensorboard_dir(run_dir, recipe) if options.tensorboard else None)
    return record


def write_outputs(record: dict[str, Any], result: EvalResult, out_dir: Path, tb_dir: Path | None) -> None:
    """``<out_dir>/<name>.json`` (atomically), ``<out_dir>/<name>.png``, and the TensorBoard scalars."""
    task, name, ablate = record["task"], record["name"], record["ablate"]
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{name}.json"
    tmp = json_path.with_name(f".{json_path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, json_path)
    title = f"{record['recipe']} ({record['arch']}) step {record['global_step']}: {task}"
    if ablate is not None:
        title += f", {ablate} removed"
    plot_result(result, task, title, out_dir / f"{name}.png")
    if tb_dir is not None:
        write_tensorboard(tb_dir, task, result, record["global_step"], out_dir / f"{name}.png", ablate)


def write_tensorboard(
    log_dir: Path,
    task: str,
    result: EvalResult,
    global_step: int,
    figure: Path | None = None,
    ablate: str | None = None,
) -> None:
    """The eval's scalars (``eval/<name>/<metric>``, name = ``eval_name(task, ablate)``), its figure as
    the image ``eval/<name>`` and, for the full model only, its HPARAMS columns (``hp/<task>/<metric>``,
    see ``hparams_metrics``)."""
    from torch.utils.tensorboard import SummaryWriter

    name = eval_name(task, ablate)

    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        if figure is not None and figure.is_file():
            from matplotlib.image import imread

            pixels = imread(figure)  # (H, W, 4) floats in [0, 1]
            writer.add_image(f"eval/{name}", pixels[..., :3], global_step, dataformats="HWC")
        swept = set(result.point_metric_names())
        for point in result.points:
            if point["status"] != "ok":
                continue
            for metric, value in point["metrics"].items():
                if value is not None:
                    writer.add_scalar(C.eval_tag(name, metric), value, global_step=int(point[result.axis]))
        for metric, value in result.metrics.items():
            if value is not None and metric not in swept:
                writer.add_scalar(C.eval_tag(name, metric), value, global_step=global_step)
        if ablate is None:  # the HPARAMS columns are the full model's
            for tag, value in hparams_metrics(task, result).items():
                writer.add_scalar(tag, value, global_step=global_step)
    finally:
        writer.close()


def _point_label(axis: str | None, point: dict[str, Any]) -> str | None:
    """How an HPARAMS column names a sweep point: ``4x`` (a multiple of the training length), ``16-shot``;
    None for points that are no column (a length in tokens, a position)."""
    if axis == "length" and point.get("factor"):
        return f"{point['factor']}x"
    if axis == "shots":
        return f"{point['shots']}-shot"
    return None


def hparams_metrics(task: str, result: EvalResult) -> dict[str, float]:
    """``{hp/<task>/<metric>: value}`` for the HPARAMS columns (``C.HP_EVAL_METRICS``) that ``result``
    measured: headline metrics by name, swept metrics as ``<metric>@<point>``; missing values left out."""
    candidates: dict[str, float | None] = {C.hp_eval_tag(task, k): v for k, v in result.metrics.items()}
    for point in result.points:
        label = _point_label(result.axis, point)
        if label is not None and point["status"] == "ok":
            for name, value in point["metrics"].items():
                candidates[C.hp_eval_tag(task, f"{name}@{label}")] = value
    return {tag: v for tag, v in candidates.items() if tag in C.HP_EVAL_METRICS and v is not None}


def _jsonable(value: Any) -> Any:
    # numpy scalars / arrays inside task configs or metas
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
