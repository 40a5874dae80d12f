"""Reading runs back: find run dirs (globs, folders of runs, sweep folders) and load what each wrote.

A run dir is any folder with ``recipe.yaml``, ``metrics.jsonl`` or ``summary.json`` (single runs and
sweep trials alike). Scalars come from ``metrics.jsonl``, the JSONL mirror every run writes; a run
without it (or a tag missing from it) falls back to its TensorBoard event files.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mosaics_lab import constants as C
from mosaics_lab.config.loader import flatten

RUN_MARKERS = (C.RECIPE_FILE, C.METRICS_FILE, C.SUMMARY_FILE)
SKIP_DIRS = {C.CHECKPOINT_DIR, "plots", "compare", "__pycache__"}


class RunsError(ValueError):
    """Paths that hold no runs; the message says what a run dir looks like."""


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in RUN_MARKERS)


def natural_key(path: Path) -> list[Any]:
    """trial-2 before trial-10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def _runs_below(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        if is_run_dir(here):
            found.append(here)
            dirnames[:] = []  # a run's subfolders (checkpoints) are not runs
            continue
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
    return sorted(found, key=natural_key)


def discover_runs(patterns: list[str]) -> list[Path]:
    """Run dirs named by ``patterns`` (paths or globs); a folder that is not a run is searched for runs."""
    if not patterns:
        raise RunsError("give at least one run dir, folder of runs or glob (e.g. runs/v2_bandwidth/)")
    runs: list[Path] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern), key=lambda p: natural_key(Path(p)))
        else:
            matches = [pattern]
        if not matches or not all(Path(m).exists() for m in matches):
            raise RunsError(f"{pattern}: no such file or directory")
        found: list[Path] = []
        for m in map(Path, matches):
            if is_run_dir(m):
                found.append(m)
            elif m.is_dir():
                found += _runs_below(m)
        if not found:
            raise RunsError(
                f"{pattern}: no runs found (a run dir holds {', '.join(RUN_MARKERS)}; "
                "train one with `mosaics-lab train` or give a sweep's folder)"
            )
        runs += found
    unique = list(dict.fromkeys(p.resolve() for p in runs))
    cwd = Path.cwd()
    return [p.relative_to(cwd) if p.is_relative_to(cwd) else p for p in unique]


def read_jsonl_scalars(path: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from a metrics.jsonl (later lines win for a repeated step)."""
    series: dict[str, dict[int, float]] = {}
    if not path.is_file():
        return {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a killed process
        step = row.get("step")
        if step is None:
            continue
        for tag, value in row.items():
            if tag in ("step", "time") or not isinstance(value, (int, float)):
                continue
            series.setdefault(tag, {})[int(step)] = float(value)
    return {tag: sorted(points.items()) for tag, points in series.items()}


def read_event_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from the run's TensorBoard event files (when metrics.jsonl lacks a tag):
    those in the run dir and in its run-name folder (``log.run_name``)."""
    folders = sorted(
        {p.parent for p in run_dir.glob("events.out.tfevents*")}
        | {p.parent for p in run_dir.glob("*/events.out.tfevents*")}
    )
    if not folders:
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for folder in folders:
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            out.setdefault(tag, []).extend((e.step, float(e.value)) for e in acc.Scalars(tag))
    return {tag: sorted(points) for tag, points in out.items()}


@dataclass
class Run:
    path: Path
    label: str
    recipe: dict[str, Any]  # flattened recipe keys (without the `_run` section)
    meta: dict[str, Any]  # the `_run` section: versions, parameter count
    summary: dict[str, Any]
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    _events: dict[str, list[tuple[int, float]]] | None = None

    def series(self, tag: str) -> list[tuple[int, float]]:
        if tag in self.scalars:
            return self.scalars[tag]
        if self._events is None:
            self._events = read_event_scalars(self.path)
        return self._events.get(tag, [])

    def final(self, tag: str) -> float | None:
        """The last logged value of ``tag`` (summary.json's final metrics if it was never mirrored)."""
        points = self.series(tag)
        if points:
            return points[-1][1]
        value = self.summary.get("metrics", {}).get(tag)
        return float(value) if isinstance(value, (int, float)) else None

    def best(self, tag: str, mode: str = "min") -> float | None:
        values = [v for _, v in self.series(tag) if math.isfinite(v)]
        if not values:
            return None
        return min(values) if mode == "min" else max(values)

    @property
    def status(self) -> str:
        return str(self.summary.get("status", "running or killed" if self.scalars else "no summary"))

    @property
    def step(self) -> int | None:
        if "global_step" in self.summary:
            return int(self.summary["global_step"])
        steps = [pts[-1][0] for pts in self.scalars.values() if pts]
        return max(steps) if steps else None


def load_run(path: Path, label: str | None = None) -> Run:
    recipe: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    recipe_path = path / C.RECIPE_FILE
    if recipe_path.is_file():
        raw = yaml.safe_load(recipe_path.read_text()) or {}
        meta = raw.pop(C.RUN_META_KEY, None) or {}
        recipe = flatten(raw)
    summary: dict[str, Any] = {}
    if (path / C.SUMMARY_FILE).is_file():
        try:
            summary = json.loads((path / C.SUMMARY_FILE).read_text())
        except json.JSONDecodeError:
            summary = {"status": "unreadable summary.json"}
    return Run(
        path=path,
        label=label or path.name,
        recipe=recipe,
        meta=meta,
        summary=summary,
        scalars=read_jsonl_scalars(path / C.METRICS_FILE),
    )


def load_runs(paths: list[Path]) -> list[Run]:
    """Runs labelled by their path below the runs' common folder (``trial-0003``, ``gpt2_tiny/ab12cd``)."""
    if len(paths) == 1:
        return [load_run(paths[0], paths[0].name)]
    root = Path(os.path.commonpath([p.resolve() for p in paths]))
    return [load_run(p, str(p.resolve().relative_to(root))) for p in paths]
