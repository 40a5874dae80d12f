"""Recipes: the typed schema and its loader (``load_recipe(path, overrides) -> Recipe``)."""

from mosaics_lab.config.loader import (
    RecipeError,
    flatten,
    load_recipe,
    load_recipe_config,
    recipe_from_dict,
    recipe_to_dict,
    recipe_to_yaml,
)
from mosaics_lab.config.schema import DataConfig, DistConfig, EvalConfig, LogConfig, Recipe, TrainConfig

__all__ = [
    "DataConfig",
    "DistConfig",
    "EvalConfig",
    "LogConfig",
    "Recipe",
    "RecipeError",
    "TrainConfig",
    "flatten",
    "load_recipe",
    "load_recipe_config",
    "recipe_from_dict",
    "recipe_to_dict",
    "recipe_to_yaml",
]
