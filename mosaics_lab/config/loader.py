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
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from mosaics_lab.config.models import MODEL_CONFIGS
from mosaics_lab.config.schema import RUN_NAME_MAX, Recipe


class RecipeError(ValueError):
    """A recipe that cannot be used as written; the message says what to change."""


# `${key.path}` (another recipe value) is allowed; `${resolver:...}` is not: oc.env reads the
# environment, oc.create / oc.decode build values from strings, and a custom resolver runs code. A
# recipe (or sweep file) must say what it runs, and what ran is in the run's recipe.yaml.
_RESOLVER_CALL = re.compile(r"\$\{\s*[A-Za-z_][\w.\-]*\s*:")


def find_resolver(cfg: DictConfig | Any, prefix: str = "") -> tuple[str, str] | None:
    """(key, raw value) of the first value that calls an OmegaConf resolver, or None. Not resolved."""
    raw = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg
    if isinstance(raw, dict):
        items = ((f"{prefix}{k}", v) for k, v in raw.items())
    elif isinstance(raw, list):
        items = ((f"{prefix}[{i}]", v) for i, v in enumerate(raw))
    else:
        return (prefix, raw) if isinstance(raw, str) and _RESOLVER_CALL.search(raw) else None
    for key, value in items:
        found = find_resolver(value, key + "." if isinstance(value, dict) else key)
        if found is not None:
            return (found[0].rstrip("."), found[1])
    return None


def refuse_resolvers(cfg: DictConfig, source: str) -> None:
    found = find_resolver(cfg)
    if found is not None:
        key, value = found
        raise RecipeError(
            f"{source}: {key!r} = {value!r} calls an OmegaConf resolver; only plain interpolations of "
            "other keys (${section.key}) are allowed. Write the value itself."
        )


def _read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # yaml errors come in many types
        raise RecipeError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(cfg, DictConfig):
        raise RecipeError(f"{path}: a recipe must be a mapping of keys, got {type(cfg).__name__}")
    refuse_resolvers(cfg, str(path))
    return cfg


def _resolve_bases(path: Path, chain: tuple[Path, ...] = ()) -> list[tuple[Path, DictConfig]]:
    """The recipe and its ``base:`` ancestors, most basic first. Paths are relative to the file."""
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise RecipeError(f"base: cycle between recipes: {cycle}")
    cfg = _read_yaml(path)
    layers: list[tuple[Path, DictConfig]] = []
    if "base" in cfg:
        bases = cfg.base
        for base in [bases] if isinstance(bases, str) else list(bases):
            layers += _resolve_bases((path.parent / str(base)), (*chain, path))
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "base"])
    return [*layers, (path, cfg)]


def _valid_keys(schema: DictConfig, dotted: str) -> list[str]:
    parent = dotted.rsplit(".", 1)[0] if "." in dotted else ""
    node = OmegaConf.select(schema, parent) if parent else schema
    return [str(k) for k in node] if isinstance(node, DictConfig) else []


def _explain(exc: OmegaConfBaseException, schema: DictConfig, source: str) -> RecipeError:
    key = getattr(exc, "full_key", None) or "?"
    if isinstance(exc, ConfigKeyError) or "not in" in str(exc):
        valid = _valid_keys(schema, key)
        leaf = key.rsplit(".", 1)[-1]
        close = difflib.get_close_matches(leaf, valid, n=1)
        parent = key[: -len(leaf)]
        hint = f"; did you mean {parent + close[0]!r}?" if close else f"; valid keys here: {', '.join(valid)}"
        return RecipeError(f"{source}: unknown recipe key {key!r}{hint}")
    if isinstance(exc, ValidationError):
        msg = str(exc).splitlines()[0]
        return RecipeError(f"{source}: wrong type for {key!r}: {msg}")
    return RecipeError(f"{source}: {key!r}: {str(exc).splitlines()[0]}")


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


def _open_free_form_dicts(node: DictConfig) -> None:
    """Struct mode applies to dataclass sections only: ``Dict[str, Any]`` fields (e.g.
    ``data.generate_args``) take any key; their consumer validates them."""
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            if child._metadata.object_type in (None, dict):
                OmegaConf.set_struct(child, False)
            else:
                _open_free_form_dicts(child)


def schema_for(arch: str) -> DictConfig:
    """The structured, struct-mode recipe schema with the model section typed for ``arch``."""
    schema = OmegaConf.structured(Recipe)
    with_model = OmegaConf.structured(MODEL_CONFIGS[arch])
    OmegaConf.set_struct(schema, False)
    schema.model = with_model
    OmegaConf.set_struct(schema, True)
    _open_free_form_dicts(schema)
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
    merged = schema
    for source, cfg in [*((str(p), c) for p, c in layers), ("command line", dotlist)]:
        try:
            merged = OmegaConf.merge(merged, cfg)
        except OmegaConfBaseException as exc:
            raise _explain(exc, schema, source) from exc
    return merged


def to_recipe(cfg: DictConfig, source: str = "recipe") -> Recipe:
    try:
        recipe = OmegaConf.to_object(cfg)
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"{source}: {exc}") from exc
    except OmegaConfBaseException as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, ValueError) else exc
        raise RecipeError(f"{source}: {str(cause).splitlines()[0]}") from exc
    assert isinstance(recipe, Recipe)
    return recipe


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
    try:
        merged = OmegaConf.merge(schema, given)
    except OmegaConfBaseException as exc:
        raise _explain(exc, schema, source) from exc
    return to_recipe(merged, source)
