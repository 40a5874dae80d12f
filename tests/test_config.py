"""Recipes: schema, base: chains, override order, and the errors a user can make."""

from pathlib import Path

import pytest

from mosaics_lab.config import RecipeError, load_recipe
from mosaics_lab.models.gpt2 import GPT2Config
from mosaics_lab.models.llama import LlamaConfig

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def chain(tmp_path):
    write(
        tmp_path / "common" / "a.yaml",
        "name: a\nmodel: {arch: llama, n_layer: 2, n_embd: 64}\ntrain: {max_steps: 5, lr: 0.1}\n",
    )
    write(tmp_path / "b.yaml", "base: common/a.yaml\nname: b\nmodel: {n_embd: 96}\ntrain: {lr: 0.2}\n")
    return tmp_path


def test_base_then_file_then_overrides_in_that_order(chain):
    r = load_recipe(chain / "b.yaml", ["train.lr=0.3"])
    assert r.name == "b"
    assert isinstance(r.model, LlamaConfig)
    assert r.model.n_layer == 2  # from the base
    assert r.model.n_embd == 96  # the file wins over its base
    assert r.train.lr == 0.3  # the command line wins over the file
    assert r.train.max_steps == 5


def test_model_section_is_typed_by_arch(chain):
    r = load_recipe(chain / "b.yaml", ["model.arch=gpt2"])
    assert isinstance(r.model, GPT2Config)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.n_emdb=3", "did you mean 'model.n_embd'"),
        ("train.max_stpes=3", "did you mean 'train.max_steps'"),
        ("trian.lr=3", "did you mean 'train'"),
        ("train.lr=fast", "wrong type for 'train.lr'"),
        ("model.arch=lama", "did you mean 'llama'"),
        ("train.micro_batch_size=5", "multiple of train.micro_batch_size"),
        ("train.max_tokens=1000", "exactly one of train.max_steps and train.max_tokens"),
        ("model.n_head=5", "divisible by model.n_head"),
        ("noequals", "key.path=value"),
    ],
)
def test_user_mistakes_name_the_key_and_the_fix(chain, override, expected):
    with pytest.raises(RecipeError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_recipe(chain / "b.yaml", [override])


def test_unknown_key_in_file_names_the_file(chain):
    write(chain / "c.yaml", "base: b.yaml\ntrain: {warmup: 3}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(chain / "c.yaml")
    assert str(chain / "c.yaml") in str(err.value) and "train.warmup_steps" in str(err.value)


def test_missing_recipe_file_is_a_clear_error(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_missing_base_file_is_a_clear_error(tmp_path):
    write(tmp_path / "r.yaml", "base: missing.yaml\n")
    with pytest.raises(RecipeError, match="missing.yaml"):
        load_recipe(tmp_path / "r.yaml")


def test_base_cycle_is_detected(tmp_path):
    write(tmp_path / "x.yaml", "base: y.yaml\n")
    write(tmp_path / "y.yaml", "base: x.yaml\n")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(tmp_path / "x.yaml")


def test_recipe_must_be_a_mapping(tmp_path):
    write(tmp_path / "r.yaml", "- a\n- b\n")
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe(tmp_path / "r.yaml")


def test_max_tokens_budget_becomes_steps(chain):
    r = load_recipe(chain / "b.yaml", ["train.max_steps=null", "train.max_tokens=100000"])
    per_step = r.train.global_batch_size * r.model.block_size
    assert r.train.total_steps(r.model.block_size) == -(-100000 // per_step)


def test_accumulation_is_derived_and_checked_against_devices(chain):
    r = load_recipe(chain / "b.yaml", ["train.global_batch_size=32", "train.micro_batch_size=8"])
    assert r.train.accumulation(world_size=1) == 4
    assert r.train.accumulation(world_size=2) == 2
    with pytest.raises(ValueError, match="devices"):
        r.train.accumulation(world_size=3)


SHIPPED_RECIPES = sorted(p for p in (REPO / "recipes").rglob("*.yaml") if "common" not in p.parts)


def test_recipes_are_shipped():
    assert len(SHIPPED_RECIPES) >= 10


@pytest.mark.parametrize("path", SHIPPED_RECIPES, ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_shipped_recipe_loads_validates_and_prints_its_config(path, capsys):
    from mosaics_lab.cli import main

    recipe = load_recipe(path)
    assert recipe.name and recipe.model.arch
    assert main(["train", str(path), "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert f"name: {recipe.name}" in printed and f"arch: {recipe.model.arch}" in printed


def test_loading_a_recipe_imports_no_torch():
    # Config is the torch-free ground floor: sweep validation, --status and compare start instantly.
    import subprocess
    import sys

    code = (
        "import sys, mosaics_lab.config as c; "
        "c.load_recipe('recipes/mosaic_v2_tiny.yaml', ['model.n_layer=2']); "
        "c.load_recipe('recipes/mosaic_v1_tiny.yaml'); "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
