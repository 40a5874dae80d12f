"""A run: its directory, its resolved recipe, its Trainer, and resuming it.

``runs/<recipe name>/<run id>/`` where the run id is, unless given, a short hash of the resolved
recipe without the keys that may change on resume (budgets, logging, evaluation cadence). So the
same command resumes the same run and a different recipe never lands in an existing run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.fabric.utilities.load import _METADATA_FILENAME
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar, TQDMProgressBar

from mosaics_lab import __version__
from mosaics_lab import constants as C
from mosaics_lab.config.loader import RecipeError, flatten, recipe_from_dict, recipe_to_dict
from mosaics_lab.config.schema import Recipe
from mosaics_lab.data import LMDataModule, dataset_vocab_size
from mosaics_lab.models import build_model
from mosaics_lab.training.callbacks import (
    AtomicCheckpointIO,
    FinalValidation,
    JsonlLogger,
    PerfMonitor,
    RunLifecycle,
    RunTensorBoardLogger,
    StepCheckpoint,
    atomic_write_text,
)
from mosaics_lab.training.module import LanguageModelModule
from mosaics_lab.training.runlock import HOLDER_FILE, LOCK_FILE, RunLock
from mosaics_lab.training.safe_load import CheckpointError, UnsafeCheckpointError, load_checkpoint_file
from mosaics_lab.training.stopfile import INTERRUPTED, STOP_FILE, RunInterrupted, StopFile
from mosaics_lab.training.strategies import (
    build_strategy,
    is_sharded_checkpoint,
    recover_interrupted_saves,
    world_size,
)

# Keys that may differ between an interrupted run and its resumption.
RESUME_SAFE_PREFIXES = ("train.max_steps", "train.max_tokens", "log.", "eval.", "data.num_workers")
# What a run dir may hold before its recipe.yaml: the lock, a sweep's STOP request and trial log.
RUN_DIR_BEFORE_RECIPE = frozenset({LOCK_FILE, HOLDER_FILE, STOP_FILE, f".{STOP_FILE}.tmp", C.TRIAL_LOG})
CORRUPT_DIR = "corrupt"  # checkpoints/corrupt/: checkpoints that failed to load, set aside on resume


class RunDirError(ValueError):
    """The run directory cannot be used for this recipe; the message says what to do instead."""


def identity(recipe_dict: dict[str, Any]) -> dict[str, Any]:
    flat = flatten({k: v for k, v in recipe_dict.items() if k != C.RUN_META_KEY})
    return {k: v for k, v in flat.items() if not k.startswith(RESUME_SAFE_PREFIXES)}


def run_id_for(recipe_dict: dict[str, Any]) -> str:
    blob = json.dumps(identity(recipe_dict), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def run_dir_for(recipe: Recipe) -> Path:
    if recipe.log.run_dir:
        return Path(recipe.log.run_dir)
    run_id = recipe.log.run_id or run_id_for(recipe_to_dict(recipe))
    return Path(recipe.log.root) / recipe.name / run_id


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def read_run_recipe(run_dir: Path) -> Recipe:
    """The recipe a run was trained with (its recipe.yaml without the `_run` section)."""
    path = Path(run_dir) / C.RECIPE_FILE
    if not path.is_file():
        raise RunDirError(f"{run_dir} is not a run directory: it has no {C.RECIPE_FILE}")
    d = yaml.safe_load(path.read_text())
    d.pop(C.RUN_META_KEY, None)
    return recipe_from_dict(d, source=str(path))


@dataclass
class RunPlan:
    recipe: Recipe
    run_dir: Path
    resume_from: Path | None
    resume_step: int | None
    total_steps: int
    param_count: int
    lock: RunLock | None = None  # held by rank zero for the life of the run


def _is_rank_zero() -> bool:
    """Before the Trainer exists: is this the process that writes run files? The global rank comes from
    torchrun (RANK), SLURM (SLURM_PROCID, only when srun started several tasks) or Lightning's own
    launcher (LOCAL_RANK, with NODE_RANK on other nodes)."""
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"]) == 0
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"]) == 0
    return int(env.get("LOCAL_RANK", "0")) == 0 and int(env.get("NODE_RANK", "0")) == 0


def resolve_recipe(recipe: Recipe) -> Recipe:
    """Fill what the recipe leaves to the data (vocabulary size) and parameter matching."""
    model = recipe.model
    data_vocab = dataset_vocab_size(recipe.data)
    if model.vocab_size is None:
        model = dataclasses.replace(model, vocab_size=data_vocab)
    elif model.vocab_size < data_vocab:
        raise RecipeError(
            f"model.vocab_size={model.vocab_size} is smaller than the vocabulary of {recipe.data.path} "
            f"({data_vocab} tokens, from its manifest): token ids would index past the embedding. Remove "
            f"model.vocab_size to take it from the data, or set it >= {data_vocab}."
        )
    from mosaics_lab.training.matching import matched_model

    return dataclasses.replace(recipe, model=matched_model(dataclasses.replace(recipe, model=model)))


def _check_explicit_run_dir(run_dir: Path) -> None:
    """An explicit ``log.run_dir`` may be anywhere, but must be empty, or a run (it has recipe.yaml; the
    identity check then says whether it is one of this recipe), or a sweep trial dir not started yet."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise RunDirError(f"log.run_dir {run_dir} is a file, not a directory")
    if (run_dir / C.RECIPE_FILE).is_file():
        return
    foreign = sorted(p.name for p in run_dir.iterdir() if p.name not in RUN_DIR_BEFORE_RECIPE)
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise RunDirError(
            f"log.run_dir {run_dir} already holds files that are not a run ({shown}); refusing to write "
            "a run there. Point log.run_dir at an empty or new directory."
        )


def tensorboard_dir(run_dir: Path, recipe: Recipe) -> Path:
    """Where the run's TensorBoard events live: ``<run dir>/<log.run_name>/``, so TensorBoard names the
    run ``<recipe name>/<run id>/<run name>`` (the run dir itself for a run without a name)."""
    return Path(run_dir) / recipe.log.tensorboard_subdir


def run_tensorboard_dir(run_dir: Path) -> Path:
    """The TensorBoard events folder of an existing run (from its recipe.yaml)."""
    return tensorboard_dir(run_dir, read_run_recipe(run_dir))


def rename_tensorboard_dir(run_dir: Path, previous: dict[str, Any], recipe: Recipe) -> None:
    """A run resumed under another ``log.run_name`` keeps its curves: its events folder is renamed."""
    old_name = (previous.get("log") or {}).get("run_name")
    if old_name is None or old_name == recipe.log.run_name:
        return
    old = Path(run_dir) / dataclasses.replace(recipe.log, run_name=old_name).tensorboard_subdir
    new = tensorboard_dir(run_dir, recipe)
    if old.is_dir() and not new.exists():
        os.replace(old, new)


def pick_checkpoint(ckpt_dir: Path, move_aside: bool) -> tuple[Path | None, int | None]:
    """The checkpoint to resume from: of ``last.ckpt`` and the ``step-*.ckpt`` beside it, the newest
    (highest step) that loads. One that does not load is reported by name and, when ``move_aside``
    (rank zero), moved to ``checkpoints/corrupt/``, never deleted. A checkpoint that would run code is
    refused (``UnsafeCheckpointError``), never skipped."""
    if not ckpt_dir.is_dir():
        return None, None
    candidates = [ckpt_dir / C.LAST_CHECKPOINT, *sorted(ckpt_dir.glob("step-*.ckpt"), reverse=True)]
    best: tuple[Path, int] | None = None
    for path in candidates:
        if not path.exists():
            continue
        # FSDP writes a sharded checkpoint directory; its step is in Lightning's meta.pt inside
        meta = path / _METADATA_FILENAME if is_sharded_checkpoint(path) else path
        try:
            ckpt = load_checkpoint_file(meta, mmap=True)
            step = int(ckpt["global_step"])
            del ckpt
        except UnsafeCheckpointError:
            raise
        except (CheckpointError, KeyError, TypeError, ValueError, IsADirectoryError) as exc:
            where = ""
            if move_aside:
                aside_dir = ckpt_dir / CORRUPT_DIR
                aside_dir.mkdir(exist_ok=True)
                dest = aside_dir / path.name
                k = 1
                while dest.exists():
                    dest, k = aside_dir / f"{path.name}.{k}", k + 1
                os.replace(path, dest)
                where = f"; moved to {dest}"
            print(f"mosaics-lab: checkpoint {path} cannot be resumed from ({exc}){where}", file=sys.stderr)
            continue
        if best is None or step > best[1]:
            best = (path, step)
    if best is None:
        return None, None
    return best


def plan_run(recipe: Recipe) -> RunPlan:
    """Resolve the recipe, pick the run dir, check it belongs to this recipe, lock it (rank zero), pick
    the checkpoint to resume from, write recipe.yaml. The caller releases ``plan.lock``."""
    recipe = resolve_recipe(recipe)
    run_dir = run_dir_for(recipe)
    recipe_path = run_dir / C.RECIPE_FILE
    as_dict = recipe_to_dict(recipe)
    if recipe.log.run_dir:
        _check_explicit_run_dir(run_dir)
    if recipe_path.exists():
        previous = yaml.safe_load(recipe_path.read_text()) or {}
        old, new = identity(previous), identity(as_dict)
        diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if diff:
            shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:5])
            raise RunDirError(
                f"run dir {run_dir} belongs to a different recipe ({shown}); refusing to mix runs. "
                "Use another log.run_id (or log.run_dir), or delete that directory."
            )
    rank_zero = _is_rank_zero()
    lock = RunLock(run_dir).acquire() if rank_zero else None
    try:
        if rank_zero and recipe_path.exists():
            rename_tensorboard_dir(run_dir, previous, recipe)
        with torch.device("meta"):
            n_params = build_model(recipe.model).num_params()
        ckpt_dir = run_dir / C.CHECKPOINT_DIR
        if rank_zero:
            # temp files (or sharded temp dirs) of a process killed while writing a checkpoint: never
            # complete, never read; a sharded swap cut between its two renames is finished first
            recover_interrupted_saves(ckpt_dir)
            for stale in ckpt_dir.glob(".*.tmp*"):
                if stale.is_dir():
                    shutil.rmtree(stale)
                else:
                    stale.unlink(missing_ok=True)
        resume_from, resume_step = pick_checkpoint(ckpt_dir, move_aside=rank_zero)
        total_steps = recipe.train.total_steps(recipe.model.block_size)
        if rank_zero:
            record = dict(as_dict)
            record[C.RUN_META_KEY] = {
                "mosaics_lab": __version__,
                "torch": str(torch.__version__),
                "lightning": L.__version__,
                "git_sha": git_sha(),
                "params": n_params,
                "total_steps": total_steps,
                "resumed_from_step": resume_step,
            }
            atomic_write_text(recipe_path, yaml.safe_dump(record, sort_keys=False))
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return RunPlan(recipe, run_dir, resume_from, resume_step, total_steps, n_params, lock)


def resolve_precision(recipe: Recipe) -> str:
    if recipe.train.precision != "auto":
        return recipe.train.precision
    on_gpu = recipe.dist.accelerator in ("gpu", "cuda") or (
        recipe.dist.accelerator == "auto" and torch.cuda.is_available()
    )
    return "bf16-mixed" if on_gpu else "32-true"


def build_trainer(plan: RunPlan, extra_callbacks: Sequence[L.Callback] = ()) -> L.Trainer:
    recipe, run_dir = plan.recipe, plan.run_dir
    accum = recipe.train.accumulation(world_size(recipe.dist))
    ckpt_dir = run_dir / C.CHECKPOINT_DIR
    callbacks: list[L.Callback] = [
        StepCheckpoint(
            dirpath=ckpt_dir,
            filename="step-{step:06d}",
            every_n_train_steps=recipe.log.checkpoint_every_n_steps,
            save_top_k=-1,
            save_last=True,
            auto_insert_metric_name=False,
        ),
        RunLifecycle(
            run_dir,
            flatten(recipe_to_dict(recipe)),
            fresh_run=plan.resume_from is None,
            compare_keys=[*(recipe.log.compare_keys or []), "model.arch"],
        ),
        PerfMonitor(recipe.train.global_batch_size * recipe.model.block_size),
        StopFile(run_dir),  # after RunLifecycle: a sweep's STOP request ends fit cleanly, status kept
        *extra_callbacks,
    ]
    if recipe.eval.batches > 0:
        callbacks.append(FinalValidation(recipe.eval.every_n_steps))
        callbacks.append(
            ModelCheckpoint(
                dirpath=ckpt_dir,
                filename="best",
                monitor=C.VAL_LOSS,
                mode="min",
                save_top_k=1,
                save_last=False,
            )
        )
    if recipe.log.progress_bar:
        try:
            import rich  # noqa: F401

            callbacks.append(RichProgressBar())
        except ImportError:
            callbacks.append(TQDMProgressBar(refresh_rate=max(1, recipe.log.every_n_steps)))
    # Lightning logs the k-th optimiser step (0-based) as step k, so a run resumed from a checkpoint
    # taken after N steps logs again from step N: anything the interrupted process logged there goes.
    # With no checkpoint the run starts again at step 0, and so do its curves.
    start_step = plan.resume_step or 0
    loggers = [
        RunTensorBoardLogger(
            save_dir=str(run_dir),
            name="",
            version=recipe.log.tensorboard_subdir,
            default_hp_metric=False,
            purge_step=start_step,
        ),
        # Only rank zero rewrites metrics.jsonl on resume (its log_metrics is rank-zero already).
        JsonlLogger(run_dir, resume_step=start_step if _is_rank_zero() else None),
    ]
    return L.Trainer(
        accelerator=recipe.dist.accelerator,
        devices=recipe.dist.devices,
        num_nodes=recipe.dist.num_nodes,
        strategy=build_strategy(recipe.dist),
        precision=resolve_precision(recipe),
        max_steps=plan.total_steps,
        max_epochs=-1,
        accumulate_grad_batches=accum,
        val_check_interval=recipe.eval.every_n_steps * accum,
        check_val_every_n_epoch=None,
        limit_val_batches=recipe.eval.batches,
        num_sanity_val_steps=0,
        log_every_n_steps=recipe.log.every_n_steps,
        logger=loggers,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=recipe.log.progress_bar,
        enable_model_summary=False,
        default_root_dir=str(run_dir),
    )


def train(recipe: Recipe, callbacks: Sequence[L.Callback] = ()) -> Path:
    """Train (or resume) the run of ``recipe``; returns its run directory. On SIGINT / SIGTERM the run
    saves its checkpoint and summary at the next optimiser step, then ``RunInterrupted`` is raised."""
    plan = plan_run(recipe)
    # A strategy on one process (fsdp with one device) initialises a process group and sets
    # MASTER_ADDR / MASTER_PORT in this process; both are undone at the end, so a later run here,
    # or a multi-process run launched from here, does not meet a port still held by this one.
    owns_group = not _dist_initialized()
    saved_env = {key: os.environ.get(key) for key in _DIST_ENV}
    try:
        L.seed_everything(plan.recipe.seed, workers=True, verbose=False)
        module = LanguageModelModule(plan.recipe, plan.total_steps)
        data = LMDataModule(
            plan.recipe.data,
            plan.recipe.model.block_size,
            plan.recipe.train.micro_batch_size,
            plan.recipe.seed,
        )
        trainer = build_trainer(plan, callbacks)
        # Weights-only: our checkpoints hold tensors and plain containers only, and never run code.
        ckpt_path = str(plan.resume_from) if plan.resume_from else None
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
        stop = next(cb for cb in trainer.callbacks if isinstance(cb, StopFile))
        if stop.signum is not None and stop.reason == INTERRUPTED:
            raise RunInterrupted(stop.signum, trainer.global_step, plan.run_dir)
    finally:
        if plan.lock is not None:
            plan.lock.release()
        if owns_group and _dist_initialized():
            torch.distributed.destroy_process_group()
        if owns_group:
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    return plan.run_dir


_DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK")


def _dist_initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()
