"""Lightning strategies from the recipe's ``dist`` section: auto, DDP, or FSDP2 through Lightning's
``ModelParallelStrategy`` (the module's ``configure_model`` applies ``fully_shard`` per block).

Nothing here is a strategy of our own. ``AtomicModelParallelStrategy`` only changes *where* Lightning's
sharded save writes: ``ModelParallelStrategy`` writes a distributed checkpoint (a directory with one
shard per rank, DCP's ``.metadata`` and Lightning's ``meta.pt``) straight into ``last.ckpt/`` and does
not go through the Trainer's ``CheckpointIO`` plugin, so our ``AtomicCheckpointIO`` cannot protect it.
A process killed mid-save would leave a directory that is half old, half new. The subclass writes the
whole directory under a temporary sibling name and renames it into place once every rank has written
its shard; ``recover_interrupted_saves`` (called before a run resumes) finishes or undoes a swap that a
kill cut between its two renames. It also loads ``meta.pt`` with ``weights_only=True`` on resume
whatever Lightning's Trainer passes for this strategy (see ``load_checkpoint``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.load import _METADATA_FILENAME
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, Strategy

from mosaics_lab.config.schema import DistConfig

# Sibling names used while a sharded checkpoint `X` is being replaced: the new one is written to
# `.X.tmp-sharded`, the old one is moved to `.X.old-sharded` for the instant between two renames.
# (plan_run removes `.*.tmp*` leftovers: a tmp directory is never complete until it is renamed.)
_TMP_SUFFIX = ".tmp-sharded"
_OLD_SUFFIX = ".old-sharded"


def world_size(dist: DistConfig) -> int:
    if dist.devices == "auto":
        n = torch.cuda.device_count() if dist.accelerator != "cpu" and torch.cuda.is_available() else 1
    else:
        n = int(dist.devices)
    return n * dist.num_nodes


def is_sharded_checkpoint(path: str | Path) -> bool:
    """A distributed checkpoint directory as ModelParallelStrategy writes it (``meta.pt`` inside)."""
    path = Path(path)
    return path.is_dir() and (path / _METADATA_FILENAME).is_file()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def recover_interrupted_saves(ckpt_dir: str | Path) -> None:
    """Undo what a kill between the two renames of a sharded save left: ``X`` missing but its previous
    version parked as ``.X.old-sharded`` -> put it back; a stale parked copy next to ``X`` -> drop it.
    Call on one process (rank zero) before reading ``ckpt_dir``."""
    ckpt_dir = Path(ckpt_dir)
    for parked in ckpt_dir.glob(f".*{_OLD_SUFFIX}"):
        target = parked.with_name(parked.name[1 : -len(_OLD_SUFFIX)])
        if target.exists():
            _remove(parked)
        else:
            os.replace(parked, target)


class AtomicModelParallelStrategy(ModelParallelStrategy):
    """Lightning's ModelParallelStrategy whose sharded checkpoints appear atomically (see module doc)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: str | Path, storage_options: Any | None = None
    ) -> None:
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        tmp = path.with_name(f".{path.name}{_TMP_SUFFIX}")
        old = path.with_name(f".{path.name}{_OLD_SUFFIX}")
        if self.global_rank == 0:
            _remove(tmp)  # a previous save killed half-way
        self.barrier()
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier()  # every rank has written its shard; rank 0 has written meta.pt
        if self.global_rank == 0:
            if path.exists():
                os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        self.barrier()  # nobody reads `path` before it is the new checkpoint

    def load_checkpoint(
        self, checkpoint_path: str | Path, weights_only: bool | None = None
    ) -> dict[str, Any]:
        # Lightning 2.6's Trainer drops `fit(..., weights_only=...)` for strategies that restore after
        # setup (this one). A checkpoint never runs code: meta.pt is loaded weights-only, always.
        return super().load_checkpoint(checkpoint_path, weights_only=True)


def build_strategy(dist: DistConfig) -> str | Strategy:
    on_gpu = dist.accelerator in ("gpu", "cuda") or (dist.accelerator == "auto" and torch.cuda.is_available())
    if dist.strategy == "ddp":
        # NCCL on GPUs (Lightning's default for CUDA); gloo is the CPU collective backend.
        return DDPStrategy(process_group_backend=None if on_gpu else "gloo")
    if dist.strategy == "fsdp":
        # Pure FSDP: every process is one data-parallel shard. ModelParallelStrategy's "auto" would set
        # the data-parallel size to the number of *nodes* (it expects tensor parallelism inside a node).
        return AtomicModelParallelStrategy(
            data_parallel_size=world_size(dist),
            tensor_parallel_size=1,
            save_distributed_checkpoint=True,
            process_group_backend=None if on_gpu else "gloo",
        )
    return "auto"
