"""Sweep files: the typed schema, loading, and validation against the base recipe.

A sweep is data (zoology's ``launch.py``): a base recipe, what to optimise, how to sample, and which
recipe keys vary. ``sweeps/<name>.yaml`` is merged onto ``SweepSpec`` in OmegaConf struct mode, like
recipes, so a misspelled key is an error naming the key and its nearest valid spelling. Every key in
``space``, ``grid``, ``when`` and ``overrides`` is then checked against the base recipe's schema by
building the recipe with that value applied (``load_recipe(base, ["key=value", ...])``) for each
choice and each range end, so a typo or an impossible value fails before any trial starts.

Two ways to generate trials:
- ``sampler.type: tpe | random``: Optuna samples ``space`` (``float``/``int`` ranges, ``categorical``
  choices, ``when`` conditions) for ``n_trials`` trials.
- ``sampler.type: grid`` (ablations): the ``grid`` list of override sets, crossed with the choices of
  every ``categorical``/``int`` param in ``space`` (conditions respected), crossed with ``seeds``. Each
  resulting cell is enqueued in the study exactly once when the study is created.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError

from mosaics_lab import constants as C
from mosaics_lab.config import typed_yaml
from mosaics_lab.config.loader import RecipeError, flatten, load_recipe, parse_overrides, recipe_to_dict

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
PARAM_TYPES = ("float", "int", "categorical")
DIRECTIONS = ("minimize", "maximize")
OBJECTIVE_VALUES = ("final", "best")
SEED_KEY = "seed"  # the recipe's top-level seed, the key `seeds:` sets
CELL_ATTR = "cell"  # trial user attribute: index of the grid cell the trial runs
RECIPE_KEY = "recipe"  # a grid cell's own recipe; also the Optuna param recording it


class SweepError(typed_yaml.ConfigFileError):
    """A sweep file (or sweep command) that cannot be used as written; the message says what to change."""


@dataclass
class ObjectiveSpec:
    metric: str = C.VAL_LOSS  # a tag from constants.OBJECTIVE_METRICS
    direction: str = "minimize"  # minimize | maximize
    value: str = "final"  # final: the last logged value; best: the best value over the run

    def __post_init__(self) -> None:
        if self.metric.startswith("eval/"):
            # The launcher reads a trial's objective from the metrics.jsonl its training writes;
            # `mosaics-lab eval` runs after training and writes eval/<task>.json, never that file.
            raise SweepError(
                f"objective.metric {self.metric!r}: eval/... metrics are written by `mosaics-lab eval` "
                "after training, and a sweep reads its objective from what training logs; optimise one "
                f"of {', '.join(C.OBJECTIVE_METRICS)} and evaluate the best trials afterwards"
            )
        if self.metric not in C.OBJECTIVE_METRICS:
            raise SweepError(
                f"objective.metric {self.metric!r} is not a metric a run logs; use one of "
                f"{', '.join(C.OBJECTIVE_METRICS)}"
            )
        _check_choice("objective.direction", self.direction, DIRECTIONS)
        _check_choice("objective.value", self.value, OBJECTIVE_VALUES)


@dataclass
class SamplerSpec:
    type: str = "tpe"  # tpe | random | grid
    seed: int = 0
    startup_trials: int = 10  # tpe: random trials before the model-based sampling starts

    def __post_init__(self) -> None:
        _check_choice("sampler.type", self.type, SAMPLERS)
        if self.startup_trials < 0:
            raise SweepError(f"sampler.startup_trials must be >= 0, got {self.startup_trials}")


@dataclass
class PrunerSpec:
    type: str = "median"  # median | hyperband | none
    warmup_steps: int = 0  # never prune before this global step (hyperband: its min_resource)
    startup_trials: int = 2  # median: trials with values before pruning starts
    reduction_factor: int = 3  # hyperband

    def __post_init__(self) -> None:
        _check_choice("pruner.type", self.type, PRUNERS)
        if self.warmup_steps < 0 or self.startup_trials < 0:
            raise SweepError("pruner.warmup_steps and pruner.startup_trials must be >= 0")
        if self.reduction_factor < 2:
            raise SweepError(f"pruner.reduction_factor must be >= 2, got {self.reduction_factor}")


@dataclass
class ParamSpec:
    """One recipe key to vary. ``when`` maps recipe keys to a value (or a list of accepted values):
    the param is only sampled for trials where every condition holds, e.g.
    ``when: {model.stm_bandwidth: frozen_alpha}``."""

    type: str = "float"  # float | int | categorical
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: Optional[list[Any]] = None
    when: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepSpec:
    study: Optional[str] = None  # study name; also the output folder <output_root>/<study>/
    description: Optional[str] = None  # free text: what the study tests (shown in summary.md)
    # The recipe every trial starts from (relative to the sweep file); a grid cell may name its own
    # `recipe:` instead. Required unless every grid cell names one.
    base_recipe: Optional[str] = None
    objective: ObjectiveSpec = field(default_factory=ObjectiveSpec)
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    space: dict[str, ParamSpec] = field(default_factory=dict)  # recipe key -> how to vary it
    grid: list[dict[str, Any]] = field(default_factory=list)  # override sets (sampler grid)
    seeds: list[int] = field(default_factory=list)  # crossed with the grid cells (sets `seed`)
    overrides: dict[str, Any] = field(default_factory=dict)  # fixed recipe keys for every trial
    # size name -> overrides for every trial, chosen with `--size NAME` (applied after `overrides`,
    # before the command line's), e.g. {smoke: {train.max_steps: 20}, gpu: {train.max_steps: 5000}}
    sizes: dict[str, dict[str, Any]] = field(default_factory=dict)
    # A reproduction study's plan (calibration, axis, evaluations, report): read by sweeps/reproduce.py,
    # ignored by `mosaics-lab sweep`.
    reproduce: dict[str, Any] = field(default_factory=dict)
    n_trials: Optional[int] = None  # trials in the study (grid: default all cells)
    storage: Optional[str] = None  # null: journal file <output_root>/<study>/journal.log; or a DB URL
    timeout: Optional[float] = None  # seconds after which this launcher starts no new trial
    output_root: str = "runs"
    # A trial whose process died (a signal: the OOM killer's SIGKILL, a SIGTERM) is re-enqueued up to
    # max_retry times and resumes from its own last checkpoint in its own run dir. RDB storages: a
    # worker that stops heartbeating for grace_period seconds has its trial failed and re-enqueued
    # the same way by any live worker.
    heartbeat_interval: int = 60
    grace_period: Optional[int] = None  # null: 2 x heartbeat_interval
    max_retry: int = 2

    def __post_init__(self) -> None:
        if self.n_trials is not None and self.n_trials < 1:
            raise SweepError(f"n_trials must be >= 1, got {self.n_trials}")
        if self.timeout is not None and self.timeout <= 0:
            raise SweepError(f"timeout must be > 0 seconds, got {self.timeout}")
        if self.heartbeat_interval < 1 or (self.grace_period is not None and self.grace_period < 1):
            raise SweepError("heartbeat_interval and grace_period must be >= 1 second")
        if self.max_retry < 0:
            raise SweepError(f"max_retry must be >= 0, got {self.max_retry}")


def _check_choice(key: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise SweepError(f"{key}: unknown value {value!r}{hint} (choose from {', '.join(allowed)})")


# --- loading --------------------------------------------------------------------------------------


def _explain(exc: Exception, schema: DictConfig, source: str) -> ValueError:
    key = str(getattr(exc, "full_key", "") or "?")
    if isinstance(exc, ConfigKeyError) and key.startswith("space."):
        leaf = key.rsplit(".", 1)[-1]
        valid = [f.name for f in dataclasses.fields(ParamSpec)]
        close = difflib.get_close_matches(leaf, valid, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(valid)}"
        return SweepError(
            f"{source}: unknown key {leaf!r} in space param {key.rsplit('.', 1)[0][6:]!r}; {hint} "
            "(space keys are dotted recipe keys, e.g. `train.lr: {type: float, low: 1e-4, high: 1e-2}`)"
        )
    if isinstance(exc, TypeError):  # e.g. a mapping where a list is expected
        return SweepError(f"{source}: {exc} (grid: is a list of mappings, space: a mapping)")
    return typed_yaml.explain(exc, schema, source, SweepError, "sweep key")


def load_sweep_spec(path: str | Path) -> SweepSpec:
    """Read and type-check a sweep file (no recipe validation yet: see ``resolve_sweep``). Free-form
    mappings (``space``, ``overrides``, ``sizes``) take dotted recipe keys, checked by resolve_sweep."""
    path = Path(path)
    raw = typed_yaml.read_yaml(path, "sweep file", SweepError)  # resolvers refused, as in recipes
    schema = typed_yaml.structured_schema(SweepSpec)
    merged = typed_yaml.merge(schema, [(str(path), raw)], lambda exc, src: _explain(exc, schema, src))
    spec = typed_yaml.to_object(merged, SweepSpec, str(path), SweepError)
    if not spec.study:
        raise SweepError(f"{path}: `study:` is required")
    if not spec.base_recipe and not (spec.grid and all(RECIPE_KEY in g for g in spec.grid)):
        raise SweepError(
            f"{path}: `base_recipe:` is required (the recipe every trial starts from), unless every grid "
            f"cell names its own `{RECIPE_KEY}:`"
        )
    if "/" in spec.study or spec.study.startswith("."):
        raise SweepError(f"{path}: study {spec.study!r} must be a plain name (it names a folder)")
    return spec


# --- values: recipe overrides and Optuna parameter values ------------------------------------------


def format_override(key: str, value: Any) -> str:
    """``key=value`` as the ``train`` command line parses it back to exactly ``value``."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float)):
        text = repr(value)
    elif isinstance(value, (list, tuple)):
        text = json.dumps(list(value))  # JSON is YAML flow syntax
    elif isinstance(value, str):
        text = value
        parsed = OmegaConf.from_dotlist([f"x={text}"]).get("x") if text else None
        if parsed != value:  # e.g. "1", "true", "null": quote so they stay strings
            text = "'" + value.replace("'", "''") + "'"
    else:
        raise SweepError(
            f"{key}: unsupported value {value!r} (use numbers, strings, booleans, null or lists)"
        )
    return f"{key}={text}"


def encode_choice(value: Any) -> Any:
    """Optuna categorical choices must be None/bool/int/float/str: lists travel as JSON text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))


@dataclass(frozen=True)
class Cell:
    """One grid cell: the recipe a trial trains and its fixed values (grid keys, expanded space
    params, seed)."""

    index: int
    values: Mapping[str, Any]  # recipe key -> value, passed to `train` as overrides
    recipe: Path  # its grid entry's `recipe:`, else the sweep's base_recipe
    recipe_label: Optional[str] = None  # the recipe as the study records it; None: no cell names one

    @property
    def params(self) -> dict[str, Any]:
        """What the study records for the cell's trial: its recipe (when cells name recipes), its values."""
        head = {RECIPE_KEY: self.recipe_label} if self.recipe_label is not None else {}
        return {**head, **self.values}


@dataclass
class Sweep:
    """A sweep file resolved against its recipes and validated; what the launcher runs."""

    spec: SweepSpec
    path: Path
    base_recipe: Optional[Path]  # None when every grid cell names its own recipe
    overrides: dict[str, Any]  # `overrides`, then the size's, then the command line's, for every trial
    recipe_values: dict[Path, dict[str, Any]]  # each recipe flattened, with `overrides` applied
    cells: list[Cell]  # grid mode only
    cell_choices: dict[str, list[Any]]  # grid mode: param -> encoded choices across all cells
    size: Optional[str] = None  # the `sizes:` entry chosen with --size
    space_lists: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> JSON text -> list choice
    base_steps: int = 0  # optimiser steps of the first recipe (the base) with `overrides`
    steps: dict[int, int] = field(default_factory=dict, repr=False)  # cell index -> optimiser steps

    @property
    def study(self) -> str:
        return self.spec.study  # type: ignore[return-value]

    @property
    def is_grid(self) -> bool:
        return self.spec.sampler.type == "grid"

    @property
    def recipes(self) -> list[Path]:
        """Every recipe a trial may train: the base recipe, then the cells' own, first-seen order."""
        return list(self.recipe_values)

    def output_dir(self, root: str | Path | None = None) -> Path:
        return Path(root if root is not None else self.spec.output_root) / self.study

    def trial_overrides(self, values: Mapping[str, Any]) -> list[str]:
        """The ``key=value`` list a trial passes to ``train``: fixed overrides, then its own values."""
        merged = {**self.overrides, **values}
        return [format_override(k, v) for k, v in merged.items()]

    def decode(self, key: str, value: Any) -> Any:
        """Optuna's stored value of ``key`` -> the recipe value (lists come back from JSON text)."""
        if isinstance(value, str) and key in self.space_lists:
            return self.space_lists[key].get(value, value)
        return value

    def lookup(self, key: str, values: Mapping[str, Any], recipe: Path | None = None) -> Any:
        """The value a trial of ``recipe`` (default: the base recipe) will see for ``key``: its own
        values, the overrides, then the recipe's."""
        if key in values:
            return values[key]
        if key in self.overrides:
            return self.overrides[key]
        return self.recipe_values[recipe or self.base_recipe].get(key)  # type: ignore[index]

    def condition_holds(
        self, when: Mapping[str, Any], values: Mapping[str, Any], recipe: Path | None = None
    ) -> bool:
        for key, expected in when.items():
            accepted = expected if isinstance(expected, list) else [expected]
            if self.lookup(key, values, recipe) not in accepted:
                return False
        return True

    def cell_of(self, trial: Any) -> Cell:
        """The grid cell an (enqueued) Optuna trial runs, from its user attributes."""
        index = trial.user_attrs.get(CELL_ATTR)
        if not isinstance(index, int) or not 0 <= index < len(self.cells):
            raise SweepError(f"trial {trial.number} has no valid grid cell ({CELL_ATTR}={index!r})")
        return self.cells[index]

    def recipe_of(self, trial: Any) -> Path:
        """The recipe ``trial`` trains: its cell's (grid), else the base recipe."""
        if self.is_grid:
            return self.cell_of(trial).recipe
        assert self.base_recipe is not None  # only grid cells may name their recipes
        return self.base_recipe

    def cell_steps(self, cell: Cell) -> int:
        """Optimiser steps of ``cell``'s trial (its recipe with the overrides and its values)."""
        if cell.index not in self.steps:
            values = {**self.overrides, **cell.values}
            recipe = _load(cell.recipe, self.path, f"grid cell {cell.index}", values)
            self.steps[cell.index] = recipe.train.total_steps(recipe.model.block_size)
        return self.steps[cell.index]

    @property
    def total_steps(self) -> int:
        """The longest trial's optimiser steps (hyperband's max resource)."""
        if self.is_grid and self.cells:
            return max(self.cell_steps(c) for c in self.cells)
        return self.base_steps

    def fingerprint(self) -> dict[str, Any]:
        """What must not change between the launchers of one study (recorded in the study)."""
        return {
            "objective": json.dumps(dataclasses.asdict(self.spec.objective), sort_keys=True),
            "sampler": self.spec.sampler.type,
            "space": json.dumps(
                {k: dataclasses.asdict(p) for k, p in self.spec.space.items()}, sort_keys=True
            ),
            "cells": json.dumps([c.params for c in self.cells], sort_keys=True, default=str),
            "overrides": json.dumps(self.overrides, sort_keys=True, default=str),
            "recipe": json.dumps(_label(self.spec.base_recipe) if self.spec.base_recipe else None),
            "size": json.dumps(self.size),
        }


# --- validation against the recipe ----------------------------------------------------------------


def _load(recipe: Path, sweep_path: Path, where: str, values: Mapping[str, Any]) -> Any:
    """``recipe`` with ``values`` applied, validated; a mistake names the sweep file and ``where``."""
    try:
        return load_recipe(recipe, [format_override(k, v) for k, v in values.items()])
    except (RecipeError, SweepError) as exc:
        msg = str(exc)
        for prefix in ("command line: ", f"{recipe}: "):
            msg = msg.removeprefix(prefix)
        raise SweepError(f"{sweep_path}: {where}: {msg}") from exc


def _range_values(key: str, p: ParamSpec) -> list[Any]:
    """The values that stand for a param in validation: each choice, or both ends of the range."""
    where = f"space.{key}"
    _check_choice(f"{where}.type", p.type, PARAM_TYPES)
    if p.type == "categorical":
        if p.low is not None or p.high is not None or p.step is not None or p.log:
            raise SweepError(f"{where}: a categorical param takes `choices:` only (no low/high/step/log)")
        if not p.choices:
            raise SweepError(f"{where}: `choices:` is empty; list at least one value")
        for c in p.choices:
            encode_choice(c)
        if len({json.dumps(encode_choice(c)) for c in p.choices}) != len(p.choices):
            raise SweepError(f"{where}: `choices:` lists a value twice")
        return list(p.choices)
    if p.choices is not None:
        raise SweepError(f"{where}: `choices:` needs type: categorical")
    if p.low is None or p.high is None:
        raise SweepError(f"{where}: a {p.type} param needs both `low:` and `high:`")
    if p.low > p.high:
        raise SweepError(f"{where}: low ({p.low}) > high ({p.high})")
    if p.log and p.low <= 0:
        raise SweepError(f"{where}: log: true needs low > 0, got {p.low}")
    if p.log and p.step is not None:
        raise SweepError(f"{where}: log: true and step: cannot be combined (Optuna samples one or the other)")
    if p.step is not None and p.step <= 0:
        raise SweepError(f"{where}: step must be > 0, got {p.step}")
    if p.type == "int":
        for name in ("low", "high", "step"):
            v = getattr(p, name)
            if v is not None and not float(v).is_integer():
                raise SweepError(f"{where}: an int param needs integer {name}, got {v}")
        return [int(p.low), int(p.high)]
    return [float(p.low), float(p.high)]


def _expansion(key: str, p: ParamSpec) -> list[Any]:
    """The values a grid sweep enumerates for a space param."""
    if p.type == "categorical":
        return list(p.choices or [])
    if p.type == "int":
        return list(range(int(p.low), int(p.high) + 1, int(p.step or 1)))  # type: ignore[arg-type]
    raise SweepError(
        f"space.{key}: sampler grid enumerates categorical and int params only; give `choices:` "
        "or use sampler.type: tpe / random for a float range"
    )


@dataclass
class _Row:
    """A cell under construction: its recipe, its recorded label, its values."""

    recipe: Path
    label: Optional[str]
    values: dict[str, Any]


def _build_cells(sweep: Sweep, entries: list[_Row]) -> list[Cell]:
    spec = sweep.spec
    rows = [_Row(e.recipe, e.label, dict(e.values)) for e in entries] or [
        _Row(sweep.base_recipe, None, {})  # type: ignore[arg-type]
    ]
    for key, p in spec.space.items():
        expanded: list[_Row] = []
        for row in rows:
            if sweep.condition_holds(p.when, row.values, row.recipe):
                expanded += [_Row(row.recipe, row.label, {**row.values, key: v}) for v in _expansion(key, p)]
            else:
                expanded.append(row)
        rows = expanded
    if spec.seeds:
        crossed = itertools.product(rows, spec.seeds)
        rows = [_Row(r.recipe, r.label, {**r.values, SEED_KEY: s}) for r, s in crossed]
    # Every cell names every grid key (its recipe's value where a cell leaves it out), so the study's
    # trials share one parameter set and Optuna's tables and plots compare like with like. Keys the
    # cell's recipe does not have (another architecture's) and space params whose condition does not
    # hold stay absent: they do not exist for that trial.
    grid_keys = list(dict.fromkeys(k for e in entries for k in e.values))
    cells = []
    for i, row in enumerate(rows):
        known = sweep.overrides.keys() | sweep.recipe_values[row.recipe].keys()
        full = {
            k: row.values[k] if k in row.values else sweep.lookup(k, row.values, row.recipe)
            for k in grid_keys
            if k in row.values or k in known
        }
        full.update({k: v for k, v in row.values.items() if k not in full})
        cells.append(Cell(i, full, row.recipe, row.label))
    return cells


def _label(written: str) -> str:
    """A recipe as the study records it: its path as the sweep file writes it, normalised."""
    return os.path.normpath(written)


def _recipe_path(sweep_path: Path, written: Any, where: str) -> Path:
    if not isinstance(written, str) or not written:
        raise SweepError(f"{sweep_path}: {where}: give the path of a recipe file, got {written!r}")
    recipe = Path(written)
    if not recipe.is_absolute():
        recipe = Path(_relpath(sweep_path.parent / recipe))
    if not recipe.is_file():
        raise SweepError(f"{sweep_path}: {where} {written!r} not found (looked for {recipe})")
    return recipe


def _grid_entries(sweep_path: Path, spec: SweepSpec, base: Path | None) -> list[_Row]:
    """The grid's entries: each one's recipe (its own `recipe:` or the base) and its values."""
    named = any(RECIPE_KEY in g for g in spec.grid)
    entries = []
    for i, g in enumerate(spec.grid):
        values = {k: v for k, v in g.items() if k != RECIPE_KEY}
        if RECIPE_KEY in g:
            written = g[RECIPE_KEY]
            recipe = _recipe_path(sweep_path, written, f"grid[{i}].{RECIPE_KEY}")
        else:
            written, recipe = spec.base_recipe, base
        entries.append(_Row(recipe, _label(written) if named else None, values))  # type: ignore[arg-type]
    return entries


def _size_overrides(path: Path, spec: SweepSpec, size: str | None) -> dict[str, Any]:
    if size is None:
        return {}
    if not spec.sizes:
        raise SweepError(f"{path}: --size {size!r}: this sweep file defines no `sizes:`")
    if size not in spec.sizes:
        close = difflib.get_close_matches(size, list(spec.sizes), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise SweepError(
            f"{path}: unknown size {size!r}{hint} (this sweep file's sizes: {', '.join(spec.sizes)})"
        )
    return dict(spec.sizes[size])


def resolve_sweep(
    path: str | Path,
    extra_overrides: Sequence[str] = (),
    spec: SweepSpec | None = None,
    validate: bool = True,
    size: str | None = None,
) -> Sweep:
    """Load ``path`` and check every key and value it varies against its recipes' schemas.

    ``size`` picks an entry of ``sizes:``; its overrides come after the file's ``overrides:`` and
    before ``extra_overrides`` (the command line's)."""
    path = Path(path)
    spec = spec or load_sweep_spec(path)
    base = _recipe_path(path, spec.base_recipe, "base_recipe") if spec.base_recipe else None
    try:
        cli = OmegaConf.to_container(parse_overrides(list(extra_overrides)))
    except RecipeError as exc:
        raise SweepError(str(exc)) from exc
    overrides = {**dict(spec.overrides), **_size_overrides(path, spec, size), **flatten(cli)}  # type: ignore[arg-type]
    fixed = {"overrides": spec.overrides, **{f"sizes.{n}": v for n, v in spec.sizes.items()}}
    for where, mapping in fixed.items():
        for key, value in mapping.items():
            if isinstance(value, dict):
                raise SweepError(
                    f"{path}: {where}.{key}: give dotted keys (e.g. {key}.name: value), not a mapping"
                )
    entries = _grid_entries(path, spec, base)
    recipes = list(dict.fromkeys([*([base] if base else []), *(e.recipe for e in entries)]))
    loaded = {}
    for r in recipes:  # every trial gets `overrides`, whichever recipe it trains
        loaded[r] = _load(r, path, "overrides" if len(recipes) == 1 else f"overrides (recipe {r})", overrides)
    sweep = Sweep(
        spec=spec,
        path=path,
        base_recipe=base,
        overrides=overrides,
        recipe_values={r: flatten(recipe_to_dict(rec)) for r, rec in loaded.items()},
        cells=[],
        cell_choices={},
        size=size,
        base_steps=loaded[recipes[0]].train.total_steps(loaded[recipes[0]].model.block_size),
    )
    _check_modes(sweep)
    if spec.seeds and not sweep.is_grid:
        sweep.overrides[SEED_KEY] = spec.seeds[0]
    for key, p in spec.space.items():
        lists = {encode_choice(c): c for c in p.choices or [] if isinstance(c, (list, tuple))}
        if lists:
            sweep.space_lists[key] = lists
    for r, rec in loaded.items():
        if spec.objective.metric.startswith("val/") and rec.eval.batches == 0:
            raise SweepError(
                f"{path}: objective.metric {spec.objective.metric!r} needs validation, but recipe {r} "
                "has eval.batches: 0; set eval.batches in `overrides:` or optimise train/loss"
            )
    entry_steps = _validate(sweep, entries, recipes) if validate else []
    if sweep.is_grid:
        sweep.cells = _build_cells(sweep, entries)
        choices: dict[str, list[Any]] = {}
        for cell in sweep.cells:
            for k, v in cell.params.items():
                enc = encode_choice(v)
                if enc not in choices.setdefault(k, []):
                    choices[k].append(enc)
        sweep.cell_choices = choices
        if validate and (spec.space or spec.seeds):  # grid entries alone were checked in _validate
            for cell in sweep.cells:
                where = f"grid cell {cell.index} {cell.params}"
                recipe = _load(cell.recipe, path, where, {**sweep.overrides, **cell.values})
                sweep.steps[cell.index] = recipe.train.total_steps(recipe.model.block_size)
        elif validate:  # then cell i is grid entry i
            sweep.steps.update(enumerate(entry_steps))
    return sweep


def _validate(sweep: Sweep, entries: list[_Row], recipes: list[Path]) -> list[int]:
    """Check every value the sweep varies, in the recipe(s) it applies to, before any trial starts;
    returns the optimiser steps of each grid entry's trial."""
    spec, path, overrides = sweep.spec, sweep.path, sweep.overrides
    for name, values in spec.sizes.items():
        for r in recipes:
            _load(r, path, f"sizes.{name}", {**spec.overrides, **values})
    for key, p in spec.space.items():
        if key == RECIPE_KEY:
            raise SweepError(f"{path}: space.{key}: a trial's recipe is set by a grid cell's `{RECIPE_KEY}:`")
        cond = {k: (v[0] if isinstance(v, list) and v else v) for k, v in p.when.items()}
        for k in p.when:
            if k == key:
                raise SweepError(f"{path}: space.{key}.when: a param cannot be conditioned on itself")
        for value in _range_values(key, p):
            for r in recipes:
                _load(r, path, f"space.{key}", {**overrides, **cond, key: value})
    entry_steps = []
    for i, e in enumerate(entries):
        recipe = _load(e.recipe, path, f"grid[{i}]", {**overrides, **e.values})
        entry_steps.append(recipe.train.total_steps(recipe.model.block_size))
    if spec.seeds:
        for r in recipes:
            _load(r, path, "seeds", {**overrides, SEED_KEY: spec.seeds[0]})
    return entry_steps


def _check_modes(sweep: Sweep) -> None:
    spec, path = sweep.spec, sweep.path
    if not sweep.is_grid:
        if spec.grid:
            raise SweepError(
                f"{path}: `grid:` lists fixed ablation cells and needs sampler.type: grid "
                f"(sampler is {spec.sampler.type!r}); or move these keys into space as categorical params"
            )
        if len(spec.seeds) > 1:
            raise SweepError(
                f"{path}: `seeds:` with several seeds crosses grid cells and needs sampler.type: grid; "
                "for tpe/random give one seed or set `seed` in overrides"
            )
        if not spec.space:
            raise SweepError(f"{path}: sampler {spec.sampler.type!r} needs a `space:` to sample")
    for key, p in spec.space.items():
        if spec.grid and any(key in g for g in spec.grid):
            raise SweepError(f"{path}: {key!r} is both in grid and in space; keep it in one of them")
        order = list(spec.space)
        for k in p.when:
            if k in spec.space and order.index(k) > order.index(key):
                raise SweepError(
                    f"{path}: space.{key}.when refers to {k!r}, which must be listed before {key!r}"
                )
    if spec.seeds and (SEED_KEY in spec.space or any(SEED_KEY in g for g in spec.grid)):
        raise SweepError(f"{path}: `seed` is set by `seeds:`; do not also vary it in space or grid")
    for s in spec.seeds:
        if not isinstance(s, int) or isinstance(s, bool):
            raise SweepError(f"{path}: seeds must be integers, got {s!r}")


def _relpath(p: Path) -> str:
    try:
        return os.path.relpath(p)
    except ValueError:  # another drive (Windows)
        return str(p)


def suggest_values(trial: Any, sweep: Sweep) -> dict[str, Any]:
    """Ask ``trial`` (an ``optuna.Trial``) for its recipe values (``sweep.recipe_of(trial)``: its recipe).

    Grid: the trial was enqueued with its cell index in the user attributes (a retried trial inherits
    them); each cell param (its recipe, when cells name recipes, and its values) is also suggested so
    Optuna records it, and the enqueued (fixed) value comes back. Otherwise ``space`` is sampled;
    ``when`` conditions are checked against the values chosen so far, then the overrides, then the
    base recipe.
    """
    if sweep.is_grid:
        cell = sweep.cell_of(trial)
        for key, value in cell.params.items():
            recorded = trial.suggest_categorical(key, sweep.cell_choices[key])
            if recorded != encode_choice(value):  # a trial enqueued without its cell's values
                raise SweepError(
                    f"trial {trial.number}: the study has {key}={recorded!r}, its grid cell {cell.index} "
                    f"{value!r}; the study was not enqueued by this sweep (pass --study NEW_NAME)"
                )
        return dict(cell.values)
    values: dict[str, Any] = {}
    for key, p in sweep.spec.space.items():
        if not sweep.condition_holds(p.when, values):
            continue
        if p.type == "float":
            step = None if p.step is None else float(p.step)
            values[key] = trial.suggest_float(key, float(p.low), float(p.high), log=p.log, step=step)  # type: ignore[arg-type]
        elif p.type == "int":
            values[key] = trial.suggest_int(key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)  # type: ignore[arg-type]
        else:
            enc = trial.suggest_categorical(key, [encode_choice(c) for c in p.choices or []])
            values[key] = sweep.decode(key, enc)
    return values


def is_finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
