"""Parameter matching (a recipe's ``match_params_of: <recipe>``): adjust this model's width-free knob
(``d_ff`` for FFN models, ``pmem_size`` for persistent memories; each config names its own in
``match_knob()``) so that the two models differ by less than 2 % in parameter count."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from mosaics_lab.config.schema import Recipe
from mosaics_lab.models import build_model
from mosaics_lab.models.base import ModelConfig

TOLERANCE = 0.02


def count_params(cfg: ModelConfig) -> int:
    with torch.device("meta"):
        return build_model(cfg).num_params()


def matched_model(recipe: Recipe, vocab_size: int | None = None) -> ModelConfig:
    """The model a recipe builds: its vocabulary filled in (when the recipe leaves it to the data) and
    its match knob fitted when the recipe names ``match_params_of``."""
    model = recipe.model
    if model.vocab_size is None and vocab_size is not None:
        model = dataclasses.replace(model, vocab_size=vocab_size)
    return match_params(model, recipe.match_params_of) if recipe.match_params_of else model


def match_params(cfg: ModelConfig, other_recipe: str | Path, _seen: tuple[str, ...] = ()) -> ModelConfig:
    from mosaics_lab.config.loader import RecipeError, load_recipe

    key = str(Path(other_recipe).resolve())
    if key in _seen:
        raise RecipeError(f"match_params_of cycle: {' -> '.join((*_seen, key))}")
    target = load_recipe(other_recipe)
    other = target.model
    if other.vocab_size is None:
        other = dataclasses.replace(other, vocab_size=cfg.vocab_size)
    if target.match_params_of:  # the target is itself matched to a third recipe: resolve it first
        other = match_params(other, target.match_params_of, (*_seen, key))
    try:
        return fit_to_param_count(cfg, count_params(other))
    except ValueError as exc:
        raise RecipeError(f"cannot match {other_recipe}: {exc}") from exc


def fit_to_param_count(cfg: ModelConfig, target: int) -> ModelConfig:
    """`cfg` with its match knob (`cfg.match_knob()`) set so that its parameter count is within
    TOLERANCE of `target`: the one matcher, used by recipes (`match_params_of`) and benchmarks.
    Raises ValueError naming the closest count when no value of the knob is close enough."""
    knob = cfg.match_knob()
    if knob is None:
        raise ValueError(f"model.arch {cfg.arch!r} has no knob to adjust for parameter matching")
    lo, hi = 1, 64 * max(cfg.n_embd, 1)
    count = lambda v: count_params(dataclasses.replace(cfg, **{knob: v}))
    while hi - lo > 1:  # parameter count is monotone in the knob
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) <= target else (lo, mid)
    best = min((lo, hi), key=lambda v: abs(count(v) - target))
    got = count(best)
    if abs(got - target) / target >= TOLERANCE:
        raise ValueError(
            f"{target:,} params within {TOLERANCE:.0%} by model.{knob} is out of reach: closest is "
            f"{got:,} at {knob}={best}; change width or depth"
        )
    return dataclasses.replace(cfg, **{knob: best})
