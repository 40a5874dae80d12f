"""Loading a trained model back for evaluation: from a run directory or a checkpoint file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.load import _METADATA_FILENAME

from mosaics_lab import constants as C
from mosaics_lab.config.loader import recipe_from_dict
from mosaics_lab.config.schema import Recipe
from mosaics_lab.models import build_model
from mosaics_lab.models.base import LanguageModel
from mosaics_lab.training.callbacks import AtomicCheckpointIO
from mosaics_lab.training.module import RECIPE_KEY
from mosaics_lab.training.safe_load import CheckpointError, load_checkpoint_file
from mosaics_lab.training.strategies import is_sharded_checkpoint

__all__ = ["CheckpointError", "consolidate", "find_checkpoint", "load_sharded_weights", "load_trained"]


def find_checkpoint(path: str | Path, which: str = "last") -> Path:
    """A run dir -> its checkpoints/<which>.ckpt (last or best; a file, or a directory of shards under
    FSDP); a .ckpt file or a sharded checkpoint directory -> itself."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"no such run directory or checkpoint: {path}")
    if is_sharded_checkpoint(path):
        return path  # an FSDP checkpoint directory itself
    ckpt = path / C.CHECKPOINT_DIR / f"{which}.ckpt"
    if not (ckpt.is_file() or is_sharded_checkpoint(ckpt)):
        raise CheckpointError(
            f"{path} has no {C.CHECKPOINT_DIR}/{which}.ckpt (has the run trained a step yet?)"
        )
    return ckpt


def load_trained(
    path: str | Path, which: str = "last", map_location: str | torch.device = "cpu"
) -> tuple[Recipe, LanguageModel]:
    """The recipe and the model (eval mode, weights loaded) of a run dir or checkpoint file."""
    ckpt_path = find_checkpoint(path, which)
    if is_sharded_checkpoint(ckpt_path):
        ckpt = load_sharded_weights(ckpt_path)
    else:
        ckpt = load_checkpoint_file(ckpt_path, map_location=map_location)
    if not isinstance(ckpt, dict) or RECIPE_KEY not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{ckpt_path} is not a mosaics-lab checkpoint (no recipe inside)")
    recipe = recipe_from_dict(ckpt[RECIPE_KEY], source=str(ckpt_path))
    model = build_model(recipe.model)
    # Lightning prefixes the module's attribute name; compiled / checkpoint-wrapped blocks add more.
    state = {}
    for key, value in ckpt["state_dict"].items():
        key = key.removeprefix("model.").replace("._orig_mod", "").replace("._checkpoint_wrapped_module", "")
        state[key] = value
    model.load_state_dict(state)
    return recipe, model.eval()


def load_sharded_weights(ckpt_dir: str | Path) -> dict[str, Any]:
    """One process, no process group: the full weights of an FSDP (distributed) checkpoint directory,
    plus everything Lightning keeps beside them in ``meta.pt`` (step, recipe, callback states).
    Optimizer shards are not read. CPU tensors; the whole model must fit in CPU memory."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    ckpt_dir = Path(ckpt_dir)
    # Lightning's meta.pt (step, recipe, RNG states): weights-only, and first, so that a crafted or
    # damaged one is refused before any shard is read.
    meta = load_checkpoint_file(ckpt_dir / _METADATA_FILENAME)
    state: dict[str, Any] = {}
    # What torch's own dcp_to_torch_save does, in memory: the empty planner builds the state dict from
    # the checkpoint's metadata (the public dcp.load only fills keys already present); `keys` keeps
    # the weights and skips the optimizer shards. DCP stores tensors as raw bytes (no pickle).
    try:
        _load_state_dict(
            state,
            storage_reader=FileSystemReader(ckpt_dir),
            planner=_EmptyStateDictLoadPlanner(keys={"state_dict"}),
            no_dist=True,
        )
    # DCP raises many types (asserts too, and its CheckpointException is a BaseException) for missing
    # or damaged shards
    except (Exception, CheckpointException) as exc:
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{ckpt_dir} is not a complete sharded checkpoint (its .metadata or a .distcp shard is "
            f"missing or damaged): {detail}"
        ) from exc
    if "state_dict" not in state:
        raise CheckpointError(f"{ckpt_dir} holds no model weights (no state_dict in its shards)")
    return {**meta, "state_dict": state["state_dict"]}


def consolidate(ckpt_dir: str | Path, out: str | Path) -> Path:
    """Write an FSDP checkpoint directory as one weights-only ``.ckpt`` for evaluation and sharing:
    the weights, the step and the recipe, nothing else (no optimizer or RNG state: a consolidated file
    evaluates, it does not resume). Tensors, a plain dict and ints only, so it loads with
    ``torch.load(weights_only=True)``; it stays a torch file rather than safetensors because the recipe
    (a nested dict) travels inside it and ``load_trained`` reads both formats the same way."""
    ckpt_dir, out = Path(ckpt_dir), Path(out)
    if not is_sharded_checkpoint(ckpt_dir):
        raise CheckpointError(
            f"{ckpt_dir} is not a sharded checkpoint directory (no {_METADATA_FILENAME} inside); "
            "a .ckpt file needs no consolidation"
        )
    ckpt = load_sharded_weights(ckpt_dir)
    if RECIPE_KEY not in ckpt:
        raise CheckpointError(f"{ckpt_dir} is not a mosaics-lab checkpoint (no recipe inside)")
    keep = {"state_dict": ckpt["state_dict"], RECIPE_KEY: ckpt[RECIPE_KEY]}
    keep.update({k: int(ckpt[k]) for k in ("global_step", "epoch") if k in ckpt})
    AtomicCheckpointIO().save_checkpoint(keep, out)
    return out
