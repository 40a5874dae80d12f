"""Sweep files: the schema, validation against the recipe before any trial, sampling, conditions, cells."""

from __future__ import annotations

import math

import optuna
import pytest

from mosaics_lab.config import load_recipe
from mosaics_lab.sweeps.spec import SweepError, format_override, resolve_sweep, suggest_values

from .conftest import BASE_RECIPE, REPO, run_sweep, write_sweep


def error_of(tmp_path, capsys, **fields) -> str:
    """Run the sweep command on a bad file: it must fail with exit 2 before anything is written."""
    path = write_sweep(tmp_path, **fields)
    out = tmp_path / "runs"
    assert run_sweep(path, out) == 2
    assert not out.exists(), "a bad sweep file must fail before any study or trial dir is created"
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (  # a typo in a recipe key: named, with the nearest valid key
            {"space": {"train.lrr": {"type": "float", "low": 1e-4, "high": 1e-2}}},
            ["space.train.lrr", "unknown recipe key 'train.lrr'", "did you mean 'train.lr'"],
        ),
        (
            {"space": {"train.lr": {"type": "float", "low": 0.1, "high": 0.01}}},
            ["space.train.lr", "low (0.1) > high"],
        ),
        (
            {"sampler": {"type": "grid"}, "space": {"model.n_layer": {"type": "categorical", "choices": []}}},
            ["space.model.n_layer", "`choices:` is empty"],
        ),
        ({"sampler": {"type": "tpee"}}, ["sampler.type", "'tpee'", "did you mean 'tpe'"]),
        ({"samplr": {"type": "tpe"}}, ["unknown sweep key 'samplr'", "did you mean 'sampler'"]),
        ({"objective": {"metrc": "val/loss"}}, ["unknown sweep key 'objective.metrc'", "'objective.metric'"]),
        ({"grid": {"model.n_layer": 1}}, ["grid: is a list of mappings"]),
        (  # a value the recipe's type rejects
            {"space": {"train.max_steps": {"type": "categorical", "choices": [10, "many"]}}},
            ["space.train.max_steps", "wrong type"],
        ),
        (  # a value the recipe's own checks reject (at a range end)
            {"space": {"model.dropout": {"type": "float", "low": 0.0, "high": 1.5}}},
            ["space.model.dropout", "dropout must be in [0, 1)"],
        ),
        (
            {"space": {"train.lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}},
            ["log: true needs low > 0"],
        ),
        (
            {"space": {"train.lr": {"type": "float", "lo": 0.1, "high": 1.0}}},
            ["unknown key 'lo'", "did you mean 'low'"],
        ),
        ({"objective": {"metric": "val/los"}}, ["objective.metric 'val/los'"]),
        (
            {"grid": [{"model.n_layer": 1}, {"model.n_layr": 2}], "sampler": {"type": "grid"}},
            ["grid[1]", "did you mean 'model.n_layer'"],
        ),
        ({"grid": [{"model.n_layer": 1}]}, ["needs sampler.type: grid"]),
        (
            {"sampler": {"type": "grid"}, "space": {"train.lr": {"type": "float", "low": 0.1, "high": 1.0}}},
            ["sampler grid enumerates categorical and int params only"],
        ),
        (
            {
                "space": {
                    "train.lr": {
                        "type": "float",
                        "low": 0.01,
                        "high": 0.1,
                        "when": {"train.warmup_steps": 5},
                    },
                    "train.warmup_steps": {"type": "int", "low": 0, "high": 10},
                },
            },
            ["must be listed before"],
        ),
        (
            {"overrides": {"train.max_stepz": 3}, "space": {"train.lr": {"low": 0.1, "high": 1}}},
            ["overrides"],
        ),
    ],
)
def test_bad_sweep_files_fail_clearly_before_any_trial(tmp_path, capsys, fields, expected):
    fields.setdefault("space", {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2}})
    fields.setdefault("n_trials", 2)
    err = error_of(tmp_path, capsys, **fields)
    assert err.startswith("mosaics-lab: error:"), err
    for text in expected:
        assert text in err, f"{text!r} not in: {err}"


def test_sampling_mode_needs_a_budget(tmp_path, capsys):
    err = error_of(tmp_path, capsys, space={"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2}})
    assert "needs a budget" in err and "--n-trials" in err


SPACE = {
    "train.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "train.warmup_steps": {"type": "int", "low": 0, "high": 40, "step": 10},
    "model.arch": {"type": "categorical", "choices": ["gpt2", "llama"]},
    # only sampled for llama trials: a condition on a param sampled before it
    "model.n_kv_head": {"type": "categorical", "choices": [1, 2], "when": {"model.arch": "llama"}},
    # a condition on a base-recipe key that never holds: never sampled
    "train.beta2": {"type": "float", "low": 0.9, "high": 0.99, "when": {"train.weight_decay": 0.5}},
}


def test_space_sampling_respects_ranges_scales_and_conditions(tmp_path):
    sweep = resolve_sweep(
        write_sweep(tmp_path, space=SPACE, n_trials=40, sampler={"type": "random", "seed": 3})
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_arch = set()
    lrs = []
    for _ in range(40):
        trial = study.ask()
        values = suggest_values(trial, sweep)
        assert 1e-4 <= values["train.lr"] <= 1e-1
        assert values["train.warmup_steps"] in (0, 10, 20, 30, 40)
        assert ("model.n_kv_head" in values) == (values["model.arch"] == "llama")
        assert "train.beta2" not in values
        assert set(trial.params) == set(values)  # what Optuna records is what the trial runs
        seen_arch.add(values["model.arch"])
        lrs.append(values["train.lr"])
        # the overrides the trial's train command gets rebuild exactly these values
        recipe = load_recipe(BASE_RECIPE, sweep.trial_overrides(values))
        assert recipe.train.lr == values["train.lr"] and recipe.model.arch == values["model.arch"]
        study.tell(trial, 0.0)
    assert seen_arch == {"gpt2", "llama"}
    # log scale: about half the samples below the geometric middle (1e-2.5), far more than linear's 3 %
    below = sum(lr < 10**-2.5 for lr in lrs)
    assert 10 <= below <= 30, below


def test_grid_cells_cross_grid_space_choices_conditions_and_seeds(tmp_path):
    sweep = resolve_sweep(
        write_sweep(
            tmp_path,
            sampler={"type": "grid"},
            grid=[{"model.arch": "gpt2"}, {"model.arch": "llama", "train.lr": 0.01}],
            space={
                "model.n_kv_head": {"type": "categorical", "choices": [1, 2], "when": {"model.arch": "llama"}}
            },
            seeds=[0, 1],
        )
    )
    cells = [dict(c.values) for c in sweep.cells]
    # gpt2 x 2 seeds + llama x 2 kv-head choices x 2 seeds
    assert len(cells) == 6
    assert sum(c["model.arch"] == "llama" for c in cells) == 4
    assert all(("model.n_kv_head" in c) == (c["model.arch"] == "llama") for c in cells)
    # a grid key a cell leaves out takes the recipe's value, so all trials share the grid's parameters
    base_lr = load_recipe(BASE_RECIPE).train.lr
    assert {c["train.lr"] for c in cells} == {base_lr, 0.01}
    assert sorted({(c["model.arch"], c.get("model.n_kv_head"), c["seed"]) for c in cells}, key=str) == sorted(
        {("gpt2", None, 0), ("gpt2", None, 1)} | {("llama", k, s) for k in (1, 2) for s in (0, 1)}, key=str
    )


@pytest.mark.parametrize(
    "value",
    ["adaptive", "1", "true", "null", "", 3, 0.0001, 1e-07, 2.5, True, None, [64, 256], ["a", "b"], math.pi],
)
def test_overrides_round_trip_through_the_command_line(value):
    from omegaconf import OmegaConf

    parsed = OmegaConf.to_container(OmegaConf.from_dotlist([format_override("a.b", value)]))["a"]["b"]
    assert parsed == value and type(parsed) is type(value)


def test_list_choices_are_encoded_for_optuna_and_decoded_for_the_recipe(tmp_path):
    sweep = resolve_sweep(
        write_sweep(
            tmp_path,
            sampler={"type": "random"},
            n_trials=4,
            space={"train.lr": {"type": "categorical", "choices": [0.001, 0.002]}},
        )
    )
    assert sweep.decode("train.lr", 0.001) == 0.001
    with pytest.raises(SweepError, match="unsupported"):
        format_override("x", {"a": 1})


def test_grid_keys_of_another_architecture_are_not_filled_into_cells_without_them(tmp_path):
    sweep = resolve_sweep(
        write_sweep(
            tmp_path,
            sampler={"type": "grid"},
            grid=[{"model.arch": "llama", "model.n_kv_head": 2}, {"model.arch": "gpt2"}],
        )
    )
    llama, gpt2 = (dict(c.values) for c in sweep.cells)
    assert llama == {"model.arch": "llama", "model.n_kv_head": 2}
    assert gpt2 == {"model.arch": "gpt2"}  # gpt2 has no n_kv_head: nothing to fill in
    load_recipe(BASE_RECIPE, sweep.trial_overrides(gpt2))  # and the trial's overrides load


def test_resolving_a_sweep_imports_no_torch():
    # Sweep validation and --status start instantly: the sweep file and every recipe it names load
    # without torch (config/ is the torch-free ground floor).
    import subprocess
    import sys

    code = (
        "import sys; from mosaics_lab.sweeps.spec import load_sweep_spec, resolve_sweep; "
        "load_sweep_spec('sweeps/v2_bandwidth.yaml'); resolve_sweep('sweeps/v1_vs_transformer.yaml'); "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
