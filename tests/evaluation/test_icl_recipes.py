"""recipes/icl: every recipe loads, fits its task in its context, is parameter-matched with its
siblings, and trains for two steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from mosaics_lab import constants as C
from mosaics_lab.config import load_recipe
from mosaics_lab.data.prepare import TASK_DEFAULTS
from mosaics_lab.data.tasks import TASKS, get_task
from mosaics_lab.training.matching import count_params, matched_model
from mosaics_lab.training.run import train
from tests.conftest import REPO, task_overrides

ICL = REPO / "recipes" / "icl"
RECIPES = sorted(ICL.glob("*.yaml"))
ARCHS = ("mosaic_v1", "mosaic_v2", "llama")


def task_of(recipe):
    args = {k: v for k, v in recipe.data.generate_args.items() if k not in TASK_DEFAULTS}
    return get_task(recipe.data.generate, **args)


def test_there_is_a_recipe_for_every_task_and_architecture():
    assert {p.stem for p in RECIPES} == {f"{t}_{a}" for t in TASKS for a in ARCHS}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_trains_its_task_within_its_context(path):
    recipe = load_recipe(path)
    task_name = next(t for t in TASKS if path.stem.startswith(f"{t}_"))
    arch = path.stem.removeprefix(f"{task_name}_")
    assert recipe.data.generate == task_name and recipe.model.arch == arch
    assert recipe.name == f"icl_{path.stem}"
    assert task_of(recipe).seq_len <= recipe.model.block_size


@pytest.mark.parametrize("task", sorted(TASKS))
def test_the_three_architectures_are_parameter_matched(task):
    counts = {}
    for arch in ARCHS:
        recipe = load_recipe(ICL / f"{task}_{arch}.yaml")
        counts[arch] = count_params(matched_model(recipe, task_of(recipe).vocab_size))
    reference = counts["mosaic_v1"]
    assert all(abs(n - reference) / reference < 0.02 for n in counts.values()), counts


@pytest.fixture(scope="module")
def task_data(tmp_path_factory) -> Path:
    """One data directory per task, shared by the three architectures' smoke runs."""
    return tmp_path_factory.mktemp("icl_data")


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_trains_two_steps(path, task_data, tmp_path):
    recipe = load_recipe(path)
    run_dir = train(load_recipe(path, task_overrides(task_data / recipe.data.generate, tmp_path / "run")))
    assert (run_dir / C.CHECKPOINT_DIR / C.LAST_CHECKPOINT).is_file()
    assert (run_dir / C.SUMMARY_FILE).is_file()
