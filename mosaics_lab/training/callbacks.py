"""Lightning parts written here because the library's did not fit, each saying why.

- ``AtomicCheckpointIO``: Lightning's TorchCheckpointIO writes in place, so a process killed mid-write
  leaves a truncated ``last.ckpt`` that a resume would pick up. We write a temp file and rename.
- ``JsonlLogger``: an extra Lightning logger mirroring every logged scalar to ``metrics.jsonl``.
- ``PerfMonitor``: ThroughputMonitor logs ``train/items_per_sec`` etc.; we keep its computation
  (``lightning.fabric.utilities.throughput.Throughput``) but log under our documented tags.
- ``RunLifecycle``: the hparams record (once per run), final ``last.ckpt``, ``summary.json``, last
  good checkpoint on a non-finite stop, RNG states in checkpoints (exact resume with dropout).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import resource
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.throughput import Throughput, get_available_flops
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from mosaics_lab import constants as C


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk keeps no half-written temp file
        raise


def _os_error_in(exc: BaseException) -> OSError | None:
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        if isinstance(node, OSError) and node.errno is not None:
            return node
        seen.add(id(node))
        node = node.__cause__ or node.__context__
    return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Temp file + fsync + rename. While ``defer_commits()`` is on (``RunLifecycle`` turns it on in
    ``on_train_batch_end``, where ModelCheckpoint saves), the rename waits for ``commit()``: Lightning
    logs a step's metrics only *after* ``on_train_batch_end``, so a checkpoint that appeared before them
    and a kill in between would resume past a step that was never logged (a hole in the curves)."""

    def __init__(self) -> None:
        super().__init__()
        self._defer = False
        self._pending: list[tuple[Path, Path]] = []

    def defer_commits(self) -> None:
        self._defer = True

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def commit(self) -> None:
        """Rename the checkpoints written since ``defer_commits`` into place; stop deferring."""
        self._defer = False
        pending, self._pending = self._pending, []
        for tmp, path in pending:
            os.replace(tmp, path)

    def save_checkpoint(self, checkpoint: dict, path: str | Path, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            if self._defer:
                self._pending = [(t, p) for t, p in self._pending if p != path] + [(tmp, path)]
                return
            os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one, never half
        except RuntimeError as exc:
            tmp.unlink(missing_ok=True)  # ENOSPC mid-write: the partial temp file would fill the disk
            # torch's zip writer turns a failed write into a RuntimeError; the OSError is its context
            cause = _os_error_in(exc)
            if cause is not None:
                raise OSError(cause.errno, cause.strerror, str(path)) from exc
            if "inline_container" in str(exc) or "PytorchStreamWriter" in str(exc):
                raise OSError(errno.EIO, "cannot write the checkpoint (disk full?)", str(path)) from exc
            raise
        except BaseException:
            tmp.unlink(missing_ok=True)  # ENOSPC mid-write: the partial temp file would fill the disk
            raise

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None):
        # Weights-only whatever the caller asks: a checkpoint never runs code (see safe_load).
        from mosaics_lab.training.safe_load import load_checkpoint_file

        return load_checkpoint_file(path, map_location=map_location or "cpu")


def read_jsonl_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, row) for every complete line of a metrics.jsonl. Lines are appended whole, so only a
    process killed mid-write leaves a torn one, always the last: it is dropped, never an error."""
    rows = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append((line, row))
    return rows


class StepCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, except that it does not save again at the step a run resumed from.
    On restart Lightning replays the restored step's batch end, and ModelCheckpoint would overwrite
    ``step-N.ckpt`` / ``last.ckpt`` with the restarting loop's state; a later resume from that copy
    starts half-way through a gradient accumulation (found by killing a run repeatedly)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if trainer.global_step > 0:
            self._last_global_step_saved = trainer.global_step


class JsonlLogger(Logger):
    """Appends ``{"step": s, "time": t, tag: value, ...}`` lines to ``<run>/metrics.jsonl``."""

    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:
        super().__init__()
        self.path = Path(run_dir) / C.METRICS_FILE
        if resume_step is not None and self.path.exists():
            self._truncate_from(resume_step)

    def _truncate_from(self, step: int) -> None:
        """A run starting at optimiser step `step` (0: no checkpoint, a restart from scratch) drops the
        lines an interrupted process logged from that step on, so curves have no duplicate steps
        (TensorBoard: purge_step). A line a kill cut mid-write is dropped too."""
        kept = [
            ln for ln, row in read_jsonl_rows(self.path) if row.get("step") is not None and row["step"] < step
        ]
        atomic_write_text(self.path, "".join(ln + "\n" for ln in kept))

    @property
    def name(self) -> str:
        return "jsonl"

    @property
    def version(self) -> str:
        return ""

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        return None

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # the recipe is in recipe.yaml

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        row = {"step": step, "time": round(time.time(), 3)}
        row.update({k: float(v) for k, v in metrics.items() if k != "epoch"})
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


HEAD_TAG = re.compile(r"^memory/(\d+)/(\w+)/(\w+)/h\d+$")  # a per-head bandwidth diagnostic
MEAN_TAG = re.compile(r"^memory/(\d+)/(\w+)/(\w+)$")  # its mean over heads


def memory_layout(tags: list[str]) -> dict[str, dict[str, list[Any]]]:
    """TensorBoard custom-scalars layout for the mosaic's diagnostics: one multi-line chart per layer,
    memory and quantity with its heads as lines, and one per memory and quantity with the layers'
    means as lines."""
    heads = sorted({m.groups() for m in map(HEAD_TAG.match, tags) if m})
    means = sorted({m.groups()[1:] for m in map(MEAN_TAG.match, tags) if m})
    charts = {
        f"layer {layer} {memory} {name} per head": ["Multiline", [rf"^memory/{layer}/{memory}/{name}/h\d+$"]]
        for layer, memory, name in heads
    }
    charts.update(
        {
            f"{memory} {name} per layer (mean over heads)": ["Multiline", [rf"^memory/\d+/{memory}/{name}$"]]
            for memory, name in means
        }
    )
    return {"memory": charts} if charts else {}


class RunTensorBoardLogger(TensorBoardLogger):
    """Lightning's TensorBoardLogger, without the ``epoch`` scalar (a token-budget run has one endless
    epoch: a flat line at 0 as the first chart), and writing once the custom-scalars layout that
    groups the memory diagnostics (``memory_layout``) when they first appear."""

    _layout_written = False

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        metrics = {k: v for k, v in metrics.items() if k != "epoch"}
        if not self._layout_written and any(k.startswith("memory/") for k in metrics):
            layout = memory_layout(list(metrics))
            if layout:
                self.experiment.add_custom_scalars(layout)
            self._layout_written = True
        super().log_metrics(metrics, step)

    @rank_zero_only
    def log_run_hparams(self, hparams: dict[str, Any], first: list[str], metrics: list[str]) -> None:
        write_hparams(self.experiment, hparams, first, metrics)


def _hparam_value(value: Any) -> bool | float | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return "null" if value is None else str(value)


def write_hparams(writer: Any, hparams: dict[str, Any], first: list[str], metrics: list[str]) -> None:
    """TensorBoard's hparams record for one run: the experiment config (every key; ``first`` marked as
    the keys that differ, which HPARAMS lists first and shows, the rest hidden but selectable) with
    ``metrics`` as its metric columns, and the run's session start with all values. Lightning's
    ``log_hyperparams`` lists every key alphabetically and cannot mark any."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    def summary(tag: str, **data: Any) -> Summary:
        # tensorboard.plugins.hparams.summary builds these too, but imports TensorFlow
        content = plugin_data_pb2.HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, **data)
        plugin = SummaryMetadata.PluginData(
            plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString()
        )
        return Summary(value=[Summary.Value(tag=tag, metadata=SummaryMetadata(plugin_data=plugin))])

    values = {k: _hparam_value(v) for k, v in hparams.items()}
    kind = {bool: api_pb2.DATA_TYPE_BOOL, float: api_pb2.DATA_TYPE_FLOAT64, str: api_pb2.DATA_TYPE_STRING}
    infos = [
        api_pb2.HParamInfo(name=k, type=kind[type(v)], differs=k in first)
        for k, v in sorted(values.items(), key=lambda kv: (kv[0] not in first, kv[0]))
    ]
    metric_infos = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=m)) for m in metrics]
    start = plugin_data_pb2.SessionStartInfo()
    for k, v in values.items():
        if isinstance(v, bool):
            start.hparams[k].bool_value = v
        elif isinstance(v, float):
            start.hparams[k].number_value = v
        else:
            start.hparams[k].string_value = v
    file_writer = writer._get_file_writer()
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metric_infos)
    file_writer.add_summary(summary(metadata.EXPERIMENT_TAG, experiment=experiment))
    file_writer.add_summary(summary(metadata.SESSION_START_INFO_TAG, session_start_info=start))
    end_info = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS)
    file_writer.add_summary(summary(metadata.SESSION_END_INFO_TAG, session_end_info=end_info))


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    # CPU: the process's peak resident set (kilobytes on Linux, bytes on macOS)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


class FinalValidation(L.Callback):
    """Validate at the last optimiser step when the interval would not: a run's final ``val/loss`` is
    what sweeps and reproductions compare, and a budget shorter than ``eval.every_n_steps`` (or not a
    multiple of it) would otherwise end without one, or on a stale one.

    Asking Lightning to stop at that step (``trainer.should_stop``) is what makes it run its
    validation loop there, as it does for early stopping; the run ends at ``max_steps`` either way."""

    def __init__(self, every_n_steps: int) -> None:
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if trainer.max_steps > 0 and step >= trainer.max_steps and step % self.every_n_steps != 0:
            trainer.should_stop = True


class PerfMonitor(L.Callback):
    """tokens/s, model FLOPs utilisation (when the device's peak is known) and peak memory.

    Measured on logging steps only (``global_step % log_every_n_steps == 0``, when Lightning writes
    step values): reading the clock means synchronising with the GPU, so the other steps run
    without a host sync here. The rate is over the last ``window`` steps (at least one logging
    interval)."""

    def __init__(self, tokens_per_step: int, flops_per_step: float | None = None, window: int = 10) -> None:
        self.tokens_per_step = tokens_per_step
        self.flops_per_step = flops_per_step
        self.window = window
        self._throughput: Throughput | None = None
        self._t0 = 0.0
        self._last_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        peak = get_available_flops(
            pl_module.device, torch.bfloat16 if "bf16" in str(trainer.precision) else torch.float32
        )
        every = max(1, trainer.log_every_n_steps)
        self._throughput = Throughput(
            available_flops=peak,
            world_size=trainer.world_size,
            window_size=max(2, -(-self.window // every) + 1),
        )
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step == self._last_step or self._throughput is None:
            return  # an accumulation micro-batch: no optimiser step happened
        self._last_step = step
        if step % max(1, trainer.log_every_n_steps) != 0:
            return  # not a logging step: no clock, no sync
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        elapsed = time.perf_counter() - self._t0
        self._throughput.update(
            time=elapsed,
            batches=step,
            samples=step * self.tokens_per_step,
            lengths=step * self.tokens_per_step,
            flops=self.flops_per_step * step if self.flops_per_step else None,
        )
        metrics = self._throughput.compute()
        if "device/items_per_sec" in metrics:
            pl_module.log(
                C.PERF_TOKENS_PER_SEC, metrics["device/items_per_sec"] * trainer.world_size, on_step=True
            )
        if "device/mfu" in metrics:
            pl_module.log(C.PERF_MFU, metrics["device/mfu"], on_step=True)
        pl_module.log(C.MEM_PEAK_GIB, peak_memory_gib(pl_module.device), on_step=True)


class RunLifecycle(L.Callback):
    def __init__(
        self, run_dir: Path, hparams: dict[str, Any], fresh_run: bool, compare_keys: list[str] | None = None
    ) -> None:
        self.run_dir = Path(run_dir)
        self.hparams = hparams
        self.compare_keys = list(compare_keys or [])
        self.fresh_run = fresh_run
        self.ckpt_dir = self.run_dir / C.CHECKPOINT_DIR
        self._t_start = 0.0
        self._saved_at_step: int | None = None
        self._resumed_rng: dict[str, Any] | None = None  # RNG states of the checkpoint resumed from
        self._train_rng: tuple[torch.Tensor, Any] | None = None  # after the last training batch

    # RNG states travel in the checkpoint so a resumed run draws the same dropout masks. Stored as
    # tensors, lists and numbers only, which torch.load(weights_only=True) accepts (numpy's own state
    # holds an ndarray, which it refuses).
    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "numpy": [
                str(kind),
                torch.from_numpy(keys.astype(np.int64)),
                int(pos),
                int(has_gauss),
                float(cached),
            ],
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Applied at the first training batch: Lightning restores callbacks before the train loader's
        # iterator exists, and creating it (at the first batch) draws from torch's RNG (its base seed).
        self._resumed_rng = state

    def _set_rng_states(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state(
            (kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached)
        )
        python = state["python"]
        random.setstate((python[0], tuple(python[1]), python[2]))
        if state.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    # -- checkpoints appear only once the metrics of their step are on disk (see AtomicCheckpointIO) --

    @staticmethod
    def _io(trainer: L.Trainer) -> AtomicCheckpointIO | None:
        io = getattr(trainer.strategy, "checkpoint_io", None)
        return io if isinstance(io, AtomicCheckpointIO) else None

    def commit_checkpoints(self, trainer: L.Trainer) -> None:
        io = self._io(trainer)
        if io is None:
            return
        if io.has_pending:
            for logger in trainer.loggers:  # TensorBoard buffers its events: on disk first
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.flush()
        io.commit()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.commit_checkpoints(trainer)  # the previous step's metrics were logged by now
        if self._resumed_rng is not None:  # the first batch after a resume: its loader has drawn
            self._set_rng_states(self._resumed_rng)
            self._resumed_rng = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t_start = time.time()
        if self.fresh_run and trainer.global_step == 0:
            for logger in trainer.loggers:
                if isinstance(logger, RunTensorBoardLogger):
                    # One hparams record per run; hp/* values are then updated as scalars (the eval
                    # columns by `mosaics-lab eval`, later).
                    columns = [C.HP_VAL_LOSS, C.HP_TRAIN_LOSS, *C.HP_EVAL_METRICS]
                    logger.log_run_hparams(self.hparams, self.compare_keys, columns)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        # What a checkpoint taken now stores; a validation that follows (its loader's iterator draws a
        # seed) is undone in on_validation_end, so training draws the same masks whether or not the
        # run was resumed in between.
        self._train_rng = (
            torch.get_rng_state(),
            torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        )
        io = self._io(trainer)
        if io is not None:
            io.defer_commits()  # ModelCheckpoint saves after this hook, before the step is logged
        loss = trainer.callback_metrics.get(C.TRAIN_LOSS)
        if loss is not None and trainer.global_step % max(1, trainer.log_every_n_steps) == 0:
            pl_module.log(C.HP_TRAIN_LOSS, float(loss), on_step=True)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.commit_checkpoints(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._train_rng is not None and not trainer.sanity_checking:
            cpu, cuda = self._train_rng
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)

    def save_last_good(self, trainer: L.Trainer) -> Path:
        path = self.ckpt_dir / C.LAST_GOOD_CHECKPOINT
        trainer.save_checkpoint(path)
        return path

    def save_step_checkpoint(self, trainer: L.Trainer) -> None:
        """``last.ckpt`` now, at an optimiser-step boundary (where ModelCheckpoint saves too), for a run
        that stops early (signal, STOP file): by ``on_train_end`` Lightning has closed the epoch, and a
        checkpoint taken there would resume on a new epoch's batches, not exactly."""
        trainer.save_checkpoint(self.ckpt_dir / C.LAST_CHECKPOINT)
        self._saved_at_step = trainer.global_step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.commit_checkpoints(trainer)
        if self._saved_at_step != trainer.global_step:
            trainer.save_checkpoint(self.ckpt_dir / C.LAST_CHECKPOINT)
        if trainer.is_global_zero:
            self.write_summary(trainer, status="completed")

    def write_summary(self, trainer: L.Trainer, status: str) -> None:
        metrics = {
            k: float(v) for k, v in trainer.callback_metrics.items() if torch.as_tensor(v).numel() == 1
        }
        summary = {
            "status": status,
            "global_step": trainer.global_step,
            "wall_time_s": round(time.time() - self._t_start, 2),
            "metrics": metrics,
        }
        atomic_write_text(self.run_dir / C.SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if trainer.is_global_zero:
            # the disk that failed the run may not take the summary either: keep the run's own error
            with contextlib.suppress(OSError):
                self.write_summary(trainer, status=f"failed: {type(exception).__name__}: {exception}")
