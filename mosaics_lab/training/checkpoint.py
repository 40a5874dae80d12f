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
from mosaics_lab.training.strategies import is_sharded_checkpoint


class CheckpointError(ValueError):
    """A path that holds no usable checkpoint; the message says what was looked for."""


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
    try:
        if is_sharded_checkpoint(ckpt_path):
            ckpt = load_sharded_weights(ckpt_path)
        else:
            ckpt = torch.load(ckpt_path, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{ckpt_path} cannot be read as a checkpoint: {exc}") from exc
    if RECIPE_KEY not in ckpt:
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
    from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    ckpt_dir = Path(ckpt_dir)
    state: dict[str, Any] = {}
    # What torch's own dcp_to_torch_save does, in memory: the empty planner builds the state dict from
    # the checkpoint's metadata (the public dcp.load only fills keys already present); `keys` keeps
    # the weights and skips the optimizer shards.
    _load_state_dict(
        state,
        storage_reader=FileSystemReader(ckpt_dir),
        planner=_EmptyStateDictLoadPlanner(keys={"state_dict"}),
        no_dist=True,
    )
    # Our meta.pt holds RNG states and the recipe, which weights_only loading refuses.
    meta = torch.load(ckpt_dir / _METADATA_FILENAME, map_location="cpu", weights_only=False)
    return {**meta, "state_dict": state["state_dict"]}


def consolidate(ckpt_dir: str | Path, out: str | Path) -> Path:
    """Write an FSDP checkpoint directory as one ``torch.load``-able file for evaluation: weights, step
    and recipe (no optimizer state: a consolidated file evaluates, it does not resume)."""
    ckpt_dir, out = Path(ckpt_dir), Path(out)
    if not is_sharded_checkpoint(ckpt_dir):
        raise CheckpointError(
            f"{ckpt_dir} is not a sharded checkpoint directory (no {_METADATA_FILENAME} inside); "
            "a .ckpt file needs no consolidation"
        )
    ckpt = load_sharded_weights(ckpt_dir)
    if RECIPE_KEY not in ckpt:
        raise CheckpointError(f"{ckpt_dir} is not a mosaics-lab checkpoint (no recipe inside)")
    AtomicCheckpointIO().save_checkpoint(ckpt, out)
    return out
