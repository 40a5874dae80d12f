"""A recipe's match_params_of: parameter matching across recipes."""

import pytest

from mosaics_lab.config import RecipeError, load_recipe
from mosaics_lab.training.matching import count_params, matched_model
from tests.conftest import REPO


def resolved(path):
    return matched_model(load_recipe(path), vocab_size=257)


@pytest.mark.parametrize(
    ("a", "b"), [("mosaic_v1_tiny", "gpt2_tiny_matched"), ("mosaic_v2_tiny", "llama_tiny_matched")]
)
def test_matched_tiny_pairs_differ_by_less_than_two_percent(a, b):
    na, nb = (count_params(resolved(REPO / "recipes" / f"{r}.yaml")) for r in (a, b))
    assert abs(na - nb) / na < 0.02


def test_a_target_that_is_itself_matched_is_resolved_first(tmp_path):
    base, target_recipe = REPO / "recipes" / "gpt2_tiny.yaml", REPO / "recipes" / "gpt2_tiny_matched.yaml"
    (tmp_path / "c.yaml").write_text(f"base: {base}\nmatch_params_of: {target_recipe}\n")
    matched = count_params(resolved(tmp_path / "c.yaml"))
    target = count_params(resolved(REPO / "recipes" / "gpt2_tiny_matched.yaml"))
    assert abs(matched - target) / target < 0.02


def test_matching_cycle_is_an_error(tmp_path):
    base = REPO / "recipes" / "gpt2_tiny.yaml"
    (tmp_path / "x.yaml").write_text(f"base: {base}\nmatch_params_of: y.yaml\n")
    (tmp_path / "y.yaml").write_text(f"base: {base}\nmatch_params_of: x.yaml\n")
    with pytest.raises(RecipeError, match="cycle"):
        resolved(tmp_path / "x.yaml")


def test_match_params_of_under_model_is_told_to_move_to_the_top_level(tmp_path):
    base = REPO / "recipes" / "gpt2_tiny.yaml"
    (tmp_path / "old.yaml").write_text(f"base: {base}\nmodel: {{match_params_of: x.yaml}}\n")
    with pytest.raises(RecipeError, match="moved to the recipe's top level.*match_params_of: x.yaml"):
        load_recipe(tmp_path / "old.yaml")
    with pytest.raises(RecipeError, match="write match_params_of=x.yaml"):
        load_recipe(base, ["model.match_params_of=x.yaml"])


def test_a_run_saved_with_the_old_key_still_loads(tmp_path):
    """recipe.yaml of runs saved before the move carry model.match_params_of: they must resume."""
    run = tmp_path / "run"
    run.mkdir()
    target = REPO / "recipes" / "mosaic_v1_tiny.yaml"
    (run / "recipe.yaml").write_text(
        f"base: {REPO / 'recipes' / 'gpt2_tiny.yaml'}\nmodel: {{match_params_of: {target}}}\n"
    )
    assert load_recipe(run / "recipe.yaml").match_params_of == str(target)
    (run / "recipe.yaml").write_text(
        f"base: {REPO / 'recipes' / 'gpt2_tiny.yaml'}\nmodel: {{match_params_of: null}}\n"
    )
    assert load_recipe(run / "recipe.yaml").match_params_of is None
