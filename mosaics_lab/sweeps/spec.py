"""Sweeps as data: a sweep file resolved against its recipes and validated (``resolve_sweep`` ->
``Sweep``), its grid cells, and what a trial asks Optuna for (``suggest_values``). The schema of the
file and its loading live in ``sweeps.schema``; their names are re-exported here, the one place
sweep definitions are imported from.

A sweep is data (zoology's ``launch.py``): a base recipe (or a recipe per grid cell), what to
optimise, how to sample, and which recipe keys vary. Every key in ``space``, ``grid``, ``when``,
``overrides`` and ``sizes`` is checked against the recipe(s) it applies to by building the recipe
with that value applied (``load_recipe(recipe, ["key=value", ...])``) for each choice and each range
end, so a typo or an impossible value fails before any trial starts.

Two ways to generate trials:
- ``sampler.type: tpe | random``: Optuna samples ``space`` (``float``/``int`` ranges, ``categorical``
  choices, ``when`` conditions) for ``n_trials`` trials.
- ``sampler.type: grid`` (ablations): the ``grid`` list of override sets (each may name its own
  ``recipe:`` and carry its own values per size, ``sizes: {cpu: {...}}``: see ``at_size``),
  crossed with the choices of every ``categorical``/``int`` param in ``space`` (conditions read the
  cell's recipe), crossed with ``seeds``. Each resulting cell is enqueued in the
  study exactly once when the study is created.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from mosaics_lab.config.loader import RecipeError, flatten, load_recipe, parse_overrides, recipe_to_dict
from mosaics_lab.sweeps.schema import (
    CELL_ATTR,
    RECIPE_KEY,
    SEED_KEY,
    SIZES_KEY,
    ObjectiveSpec,
    ParamSpec,
    PrunerSpec,
    SamplerSpec,
    SweepError,
    SweepSpec,
    at_size,
    check_modes,
    encode_choice,
    expansion,
    format_override,
    is_finite,
    load_sweep_spec,
    range_values,
)

__all__ = [  # the sweep file's names (sweeps.schema), then the resolved sweep's
    "CELL_ATTR",
    "RECIPE_KEY",
    "SEED_KEY",
    "SIZES_KEY",
    "ObjectiveSpec",
    "ParamSpec",
    "PrunerSpec",
    "SamplerSpec",
    "SweepError",
    "SweepSpec",
    "encode_choice",
    "format_override",
    "is_finite",
    "load_sweep_spec",
    "at_size",
    "Cell",
    "Sweep",
    "resolve_sweep",
    "suggest_values",
]


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
                expanded += [_Row(row.recipe, row.label, {**row.values, key: v}) for v in expansion(key, p)]
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
    per_size_cells = [
        (i, {k: v for k, v in g.items() if k not in (RECIPE_KEY, SIZES_KEY)}, g[SIZES_KEY])
        for i, g in enumerate(spec.grid)
        if g.get(SIZES_KEY)
    ]
    spec = at_size(spec, size)  # the cells' own `sizes:` values for this size (checked for all below)
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
    check_modes(spec, path)
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
    if validate:  # every size's values of every cell, not only this size's
        for i, own, per_size in per_size_cells:
            for name, values in per_size.items():
                at = {**dict(spec.overrides), **dict(spec.sizes[name]), **own, **values}
                _load(entries[i].recipe, path, f"grid[{i}].{SIZES_KEY}.{name}", at)
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
        for value in range_values(key, p):
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
