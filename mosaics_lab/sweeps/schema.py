"""A sweep file, as data: the typed schema (``SweepSpec``), loading it, and the checks that need no
recipe (values of each field, params, sampler vs grid). ``sweeps.spec`` resolves it against its
recipes; import from there.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError

from mosaics_lab import constants as C
from mosaics_lab.config import typed_yaml

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
PARAM_TYPES = ("float", "int", "categorical")
DIRECTIONS = ("minimize", "maximize")
OBJECTIVE_VALUES = ("final", "best")
SEED_KEY = "seed"  # the recipe's top-level seed, the key `seeds:` sets
CELL_ATTR = "cell"  # trial user attribute: index of the grid cell the trial runs
RECIPE_KEY = "recipe"  # a grid cell's own recipe; also the Optuna param recording it
SIZES_KEY = "sizes"  # a grid cell's own values per size ({size: {key: value}}), merged by `at_size`


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
    for i, g in enumerate(spec.grid):
        per_size = g.get(SIZES_KEY)
        if per_size is None:
            continue
        if not isinstance(per_size, dict) or not all(isinstance(v, dict) for v in per_size.values()):
            raise SweepError(
                f"{path}: grid[{i}].{SIZES_KEY}: give a mapping of size name -> dotted recipe keys, e.g. "
                f"`{SIZES_KEY}: {{cpu: {{model.stm_window: 8}}}}`"
            )
        for name, values in per_size.items():
            if name not in spec.sizes:
                close = difflib.get_close_matches(str(name), list(spec.sizes), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise SweepError(
                    f"{path}: grid[{i}].{SIZES_KEY}.{name}: no such size in `sizes:`{hint} "
                    f"(sizes: {', '.join(spec.sizes) or 'none'})"
                )
            for key, value in values.items():
                if isinstance(value, dict):
                    raise SweepError(
                        f"{path}: grid[{i}].{SIZES_KEY}.{name}.{key}: give dotted keys "
                        f"(e.g. {key}.name: value), not a mapping"
                    )
    return spec


def at_size(spec: SweepSpec, size: str | None) -> SweepSpec:
    """``spec`` with each grid cell's ``sizes.<size>`` values merged into the cell (they win over the
    cell's own values) and every cell's ``sizes:`` dropped; ``size`` None drops them only. A size's
    values for one architecture's cell (e.g. mosaic_v2's windows at a shorter context) live here,
    where the file's ``sizes:`` would apply them to every recipe."""
    if not any(SIZES_KEY in g for g in spec.grid):
        return spec
    grid = []
    for g in spec.grid:
        per_size = g.get(SIZES_KEY) or {}
        cell = {k: v for k, v in g.items() if k != SIZES_KEY}
        grid.append({**cell, **((per_size.get(size) or {}) if size is not None else {})})
    return dataclasses.replace(spec, grid=grid)


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


# --- checks that need no recipe -------------------------------------------------------------------


def range_values(key: str, p: ParamSpec) -> list[Any]:
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


def expansion(key: str, p: ParamSpec) -> list[Any]:
    """The values a grid sweep enumerates for a space param."""
    if p.type == "categorical":
        return list(p.choices or [])
    if p.type == "int":
        return list(range(int(p.low), int(p.high) + 1, int(p.step or 1)))  # type: ignore[arg-type]
    raise SweepError(
        f"space.{key}: sampler grid enumerates categorical and int params only; give `choices:` "
        "or use sampler.type: tpe / random for a float range"
    )


def check_modes(spec: SweepSpec, path: Path) -> None:
    """The file's keys agree with its sampler (no recipe needed)."""
    if spec.sampler.type != "grid":
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


def is_finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
