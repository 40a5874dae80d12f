"""Loading a trained model back for evaluation: from a run directory or a checkpoint file."""

from __future__ import annotations

from pathlib import Path

import torch

from mosaics_lab import constants as C
from mosaics_lab.config.loader import recipe_from_dict
from mosaics_lab.config.schema import Recipe
from mosaics_lab.models import build_model
from mosaics_lab.models.base import LanguageModel
from mosaics_lab.training.module import RECIPE_KEY


class CheckpointError(ValueError):
    """A path that holds no usable checkpoint; the message says what was looked for."""


def find_checkpoint(path: str | Path, which: str = "last") -> Path:
    """A run dir -> its checkpoints/<which>.ckpt (last or best); a .ckpt file -> itself."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"no such run directory or checkpoint: {path}")
    ckpt = path / C.CHECKPOINT_DIR / f"{which}.ckpt"
    if not ckpt.is_file():
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
