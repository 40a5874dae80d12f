"""Loading a recipe: schema <- base recipes <- recipe file <- command-line overrides, in that order.

Every user mistake becomes a ``RecipeError`` naming the key, where it came from, and what to write
instead, before anything is trained or written.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mosaics_lab.config import typed_yaml
from mosaics_lab.config.models import MODEL_CONFIGS
from mosaics_lab.config.schema import RUN_NAME_MAX, Recipe


class RecipeError(typed_yaml.ConfigFileError):
    """A recipe that cannot be used as written; the message says what to change."""


def refuse_resolvers(cfg: DictConfig, source: str) -> None:
    """No ``${resolver:...}`` in a recipe (see ``typed_yaml``): a ``RecipeError`` naming the key."""
    typed_yaml.refuse_resolvers(cfg, source, RecipeError)


def _resolve_bases(path: Path, chain: tuple[Path, ...] = ()) -> list[tuple[Path, DictConfig]]:
    """The recipe and its ``base:`` ancestors, most basic first. Paths are relative to the file."""
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise RecipeError(f"base: cycle between recipes: {cycle}")
    cfg = typed_yaml.read_yaml(path, "recipe file", RecipeError)
    layers: list[tuple[Path, DictConfig]] = []
    if "base" in cfg:
        bases = cfg.base
        for base in [bases] if isinstance(bases, str) else list(bases):
            layers += _resolve_bases((path.parent / str(base)), (*chain, path))
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "base"])
    return [*layers, (path, cfg)]


def _explainer(schema: DictConfig) -> typed_yaml.Explainer:
    return lambda exc, source: typed_yaml.explain(exc, schema, source, RecipeError, "recipe key")


def _arch_of(layers: list[tuple[Path, DictConfig]], overrides: DictConfig) -> str:
    arch = "gpt2"
    for _, cfg in [*layers, (None, overrides)]:
        value = OmegaConf.select(cfg, "model.arch", default=None)
        if value is not None:
            arch = str(value)
    if arch not in MODEL_CONFIGS:
        close = difflib.get_close_matches(arch, list(MODEL_CONFIGS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise RecipeError(f"unknown model.arch {arch!r}{hint} (known: {', '.join(sorted(MODEL_CONFIGS))})")
    return arch


def schema_for(arch: str) -> DictConfig:
    """The structured, struct-mode recipe schema with the model section typed for ``arch``."""
    schema = OmegaConf.structured(Recipe)
    with_model = OmegaConf.structured(MODEL_CONFIGS[arch])
    OmegaConf.set_struct(schema, False)
    schema.model = with_model
    OmegaConf.set_struct(schema, True)
    typed_yaml.open_free_form_dicts(schema)
    return schema


def parse_overrides(overrides: Sequence[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override {item!r} must look like key.path=value (e.g. train.max_steps=200)")
    try:
        dotlist = OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as exc:
        raise RecipeError(f"command line: cannot parse overrides {list(overrides)}: {exc}") from exc
    refuse_resolvers(dotlist, "command line")
    return dotlist


def _move_legacy_match_params_of(file: Path, cfg: DictConfig) -> None:
    """Runs saved before the key moved have `model.match_params_of` in their recipe.yaml (null, or the
    recipe their already-matched model was fitted to): read it as the top-level key, so they resume.
    A recipe that sets it is told to move it."""
    model = cfg.get("model") if isinstance(cfg, DictConfig) else None
    if not isinstance(model, DictConfig) or "match_params_of" not in model:
        return
    value = model.pop("match_params_of")
    if value is None:
        return
    if file.name != "recipe.yaml":  # a run's saved recipe
        raise RecipeError(
            f"{file}: model.match_params_of moved to the recipe's top level (it relates two recipes, "
            f"not a model property): write `match_params_of: {value}` beside `model:`"
        )
    if "match_params_of" not in cfg:
        cfg.match_params_of = value


def load_recipe_config(path: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """The merged, validated recipe as an OmegaConf DictConfig (struct mode)."""
    layers = _resolve_bases(Path(path))
    for file, cfg in layers:
        _move_legacy_match_params_of(file, cfg)
        # like base:, a recipe path inside a recipe is relative to the file that names it
        other = OmegaConf.select(cfg, "match_params_of", default=None)
        if other and not Path(str(other)).is_absolute():
            cfg.match_params_of = os.path.relpath(file.parent / str(other))
    dotlist = parse_overrides(overrides)
    if OmegaConf.select(dotlist, "model.match_params_of", default=None) is not None:
        raise RecipeError(
            "command line: model.match_params_of moved to the recipe's top level: write "
            f"match_params_of={dotlist.model.match_params_of}"
        )
    schema = schema_for(_arch_of(layers, dotlist))
    sources = [*((str(p), c) for p, c in layers), ("command line", dotlist)]
    return typed_yaml.merge(schema, sources, _explainer(schema))


def to_recipe(cfg: DictConfig, source: str = "recipe") -> Recipe:
    return typed_yaml.to_object(cfg, Recipe, source, RecipeError)


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Load ``path`` (with its ``base:`` chain) and apply ``a.b=c`` overrides; validate everything."""
    cfg = load_recipe_config(path, overrides)
    try:
        return with_run_name(to_recipe(cfg, source=str(path)), path, overrides)
    except RecipeError as exc:
        # A value's check failed: blame the command line when the message names an overridden key.
        detail = str(exc).removeprefix(f"{path}: ")
        keyed = [(item.split("=", 1)[0].strip(), item) for item in overrides]
        starts = [item for key, item in keyed if detail.startswith(f"{key} ")]
        named = [
            item
            for key, item in keyed
            if "." in key and re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", detail)
        ]
        if starts or named:
            raise RecipeError(f"command line {(starts or named)[0]!r}: {detail}") from exc
        raise


# Short names of the keys most often varied, for run names (others: the key's last part)
SHORT_KEYS = {
    "train.lr": "lr",
    "train.weight_decay": "wd",
    "train.warmup_steps": "warmup",
    "train.max_steps": "steps",
    "train.global_batch_size": "bs",
    "train.micro_batch_size": "mbs",
}
NAME_DIGITS = 3  # significant digits of a float in a run name


def override_keys(path: str | Path, overrides: Sequence[str], recipe: Recipe) -> list[str]:
    """The flattened recipe keys whose value the command line changed from the recipe file's, in the
    order the overrides name them (log.* keys excepted: they never distinguish runs)."""
    if not overrides:
        return []
    base = flatten(OmegaConf.to_container(load_recipe_config(path), resolve=True))  # type: ignore[arg-type]
    merged = flatten(recipe_to_dict(recipe))
    changed = [k for k in merged if not k.startswith("log.") and (k not in base or merged[k] != base[k])]
    order = [item.split("=", 1)[0].strip().lstrip("+~") for item in overrides]

    def position(key: str) -> int:
        return next((i for i, o in enumerate(order) if key == o or key.startswith(o + ".")), len(order))

    return sorted(changed, key=position)


def short_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.{NAME_DIGITS}g}"
    if isinstance(value, (list, tuple)):
        return ",".join(short_value(v) for v in value)
    text = str(value)
    return os.path.basename(text.rstrip("/")) or text if "/" in text else text


def default_run_name(recipe: Recipe, keys: Sequence[str]) -> str:
    """``<recipe name> lr=0.0037 wd=0.19``: the name and the distinguishing values, shortened."""
    flat = flatten(recipe_to_dict(recipe))
    short = {k: SHORT_KEYS.get(k, k.rsplit(".", 1)[-1]) for k in keys if k in flat}
    clash = {s for s in short.values() if list(short.values()).count(s) > 1}
    parts = [f"{k if s in clash else s}={short_value(flat[k])}" for k, s in short.items()]
    name = " ".join([recipe.name, *parts])
    return name if len(name) <= RUN_NAME_MAX else name[: RUN_NAME_MAX - 3] + "..."


def with_run_name(recipe: Recipe, path: str | Path, overrides: Sequence[str]) -> Recipe:
    """Fill ``log.compare_keys`` (the overrides that differ) and ``log.run_name`` when not given."""
    log = recipe.log
    keys = log.compare_keys if log.compare_keys is not None else override_keys(path, overrides, recipe)
    name = log.run_name if log.run_name is not None else default_run_name(recipe, keys)
    return dataclasses.replace(recipe, log=dataclasses.replace(log, compare_keys=list(keys), run_name=name))


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(recipe), resolve=True)  # type: ignore[return-value]


def recipe_to_yaml(recipe: Recipe) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(recipe))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; used for hparams records and sweep tables."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def recipe_from_dict(d: dict[str, Any], source: str = "recipe") -> Recipe:
    """Rebuild a Recipe from its dict form (e.g. a run's recipe.yaml), with full validation."""
    arch = str(d.get("model", {}).get("arch", "gpt2"))
    if arch not in MODEL_CONFIGS:
        raise RecipeError(f"{source}: unknown model.arch {arch!r}")
    schema = schema_for(arch)
    given = OmegaConf.create(d)
    refuse_resolvers(given, source)  # a checkpoint's recipe is data from a file, like a recipe
    return to_recipe(typed_yaml.merge(schema, [(source, given)], _explainer(schema)), source)
