"""model.match_params_of: parameter matching across recipes."""

import dataclasses

import pytest

from mosaics_lab.config import RecipeError, load_recipe
from mosaics_lab.training.matching import count_params, match_params
from tests.conftest import REPO


def resolved(path):
    model = dataclasses.replace(load_recipe(path).model, vocab_size=257)
    return match_params(model, model.match_params_of) if model.match_params_of else model


@pytest.mark.parametrize(
    ("a", "b"), [("mosaic_v1_tiny", "gpt2_tiny_matched"), ("mosaic_v2_tiny", "llama_tiny_matched")]
)
def test_matched_tiny_pairs_differ_by_less_than_two_percent(a, b):
    na, nb = (count_params(resolved(REPO / "recipes" / f"{r}.yaml")) for r in (a, b))
    assert abs(na - nb) / na < 0.02


def test_a_target_that_is_itself_matched_is_resolved_first(tmp_path):
    base, target_recipe = REPO / "recipes" / "gpt2_tiny.yaml", REPO / "recipes" / "gpt2_tiny_matched.yaml"
    (tmp_path / "c.yaml").write_text(f"base: {base}\nmodel: {{match_params_of: {target_recipe}}}\n")
    matched = count_params(resolved(tmp_path / "c.yaml"))
    target = count_params(resolved(REPO / "recipes" / "gpt2_tiny_matched.yaml"))
    assert abs(matched - target) / target < 0.02


def test_matching_cycle_is_an_error(tmp_path):
    base = REPO / "recipes" / "gpt2_tiny.yaml"
    (tmp_path / "x.yaml").write_text(f"base: {base}\nmodel: {{match_params_of: y.yaml}}\n")
    (tmp_path / "y.yaml").write_text(f"base: {base}\nmodel: {{match_params_of: x.yaml}}\n")
    with pytest.raises(RecipeError, match="cycle"):
        resolved(tmp_path / "x.yaml")
