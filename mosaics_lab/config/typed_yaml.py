"""YAML file -> typed dataclasses, the one way for every file a user writes (recipes, sweep files).

Read the file (a mapping, or one error naming it), refuse OmegaConf resolvers, merge it onto the
dataclass schema in struct mode, explain an unknown key with its nearest valid spelling, and build
the dataclasses (whose ``__post_init__`` checks values). Each caller passes its own error type
(``RecipeError``, ``SweepError``), so its users see one kind of error.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

T = TypeVar("T")


class ConfigFileError(ValueError):
    """A file that cannot be used as written; the message says what to change."""


# `${key.path}` (another value of the file) is allowed; `${resolver:...}` is not: oc.env reads the
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


def refuse_resolvers(cfg: DictConfig, source: str, error: type[ValueError] = ConfigFileError) -> None:
    found = find_resolver(cfg)
    if found is not None:
        key, value = found
        raise error(
            f"{source}: {key!r} = {value!r} calls an OmegaConf resolver; only plain interpolations of "
            "other keys (${section.key}) are allowed. Write the value itself."
        )


def read_yaml(path: Path, what: str, error: type[ValueError] = ConfigFileError) -> DictConfig:
    """The mapping in ``path`` (a ``what``: "recipe file", "sweep file"), resolvers refused."""
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # yaml errors come in many types
        raise error(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(cfg, DictConfig):
        raise error(f"{path}: a {what} must be a mapping of keys, got {type(cfg).__name__}")
    refuse_resolvers(cfg, str(path), error)
    return cfg


def open_free_form_dicts(node: DictConfig) -> None:
    """Struct mode applies to dataclass sections only: ``Dict[str, ...]`` fields (a recipe's
    ``data.generate_args``, a sweep's ``space`` keyed by dotted recipe keys) take any key; their
    consumer validates them."""
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            if child._metadata.object_type in (None, dict):
                OmegaConf.set_struct(child, False)
            else:
                open_free_form_dicts(child)


def structured_schema(cls: type) -> DictConfig:
    """The struct-mode schema of dataclass ``cls``, its free-form mappings open."""
    schema = OmegaConf.structured(cls)
    OmegaConf.set_struct(schema, True)
    open_free_form_dicts(schema)
    return schema


def valid_keys(schema: DictConfig, dotted: str) -> list[str]:
    """The keys the schema allows beside ``dotted`` (the keys of its parent section)."""
    parent = dotted.rsplit(".", 1)[0] if "." in dotted else ""
    node = OmegaConf.select(schema, parent) if parent else schema
    return [str(k) for k in node] if isinstance(node, DictConfig) else []


def explain(
    exc: Exception, schema: DictConfig, source: str, error: type[ValueError], noun: str
) -> ValueError:
    """One line for a merge error: an unknown ``noun`` (e.g. "recipe key") with its nearest valid
    spelling, or a wrong type, naming the key and ``source``."""
    key = str(getattr(exc, "full_key", None) or "?")
    if isinstance(exc, ConfigKeyError) or "not in" in str(exc):
        valid = valid_keys(schema, key)
        leaf = key.rsplit(".", 1)[-1]
        close = difflib.get_close_matches(leaf, valid, n=1)
        parent = key[: -len(leaf)]
        hint = f"; did you mean {parent + close[0]!r}?" if close else f"; valid keys here: {', '.join(valid)}"
        return error(f"{source}: unknown {noun} {key!r}{hint}")
    if isinstance(exc, ValidationError):
        return error(f"{source}: wrong type for {key!r}: {str(exc).splitlines()[0]}")
    return error(f"{source}: {key!r}: {str(exc).splitlines()[0]}")


Explainer = Callable[[Exception, str], ValueError]  # (merge error, source) -> the error to raise


def merge(schema: DictConfig, layers: Sequence[tuple[str, Any]], explainer: Explainer) -> DictConfig:
    """``schema`` <- each (source, config) layer in order; a layer that does not fit is explained."""
    merged = schema
    for source, cfg in layers:
        try:
            merged = OmegaConf.merge(merged, cfg)
        except (OmegaConfBaseException, TypeError) as exc:  # TypeError: e.g. a mapping for a list
            raise explainer(exc, source) from exc
    return merged


def to_object(cfg: DictConfig, cls: type[T], source: str, error: type[ValueError]) -> T:
    """The dataclasses of a merged config; a value their checks reject is one line naming ``source``."""
    try:
        obj = OmegaConf.to_object(cfg)
    except (ValueError, TypeError) as exc:
        raise error(f"{source}: {exc}") from exc
    except OmegaConfBaseException as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, ValueError) else exc
        raise error(f"{source}: {str(cause).splitlines()[0]}") from exc
    assert isinstance(obj, cls)
    return obj
