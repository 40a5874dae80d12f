"""Grid cells that name their own recipe (architecture x task x lr x seed grids), and named sizes
(`sizes:` + `--size`): validation, the cells, what a trial's command line gets, the study's guard."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from mosaics_lab.sweeps.report import SUMMARY_MD
from mosaics_lab.sweeps.spec import RECIPE_KEY, SweepError, resolve_sweep, suggest_values
from mosaics_lab.sweeps.study import build_pruner

from .conftest import REPO, load_trials, read_ledger, run_sweep, write_sweep

GPT2 = REPO / "recipes" / "gpt2_tiny.yaml"
LLAMA = REPO / "recipes" / "llama_tiny.yaml"


def write_recipe(directory: Path, name: str, base: Path, **sections: dict) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"base": str(base), "name": name, **sections}))
    return path


def error_text(tmp_path, capsys, *extra, **fields) -> str:
    path = write_sweep(tmp_path, **fields)
    out = tmp_path / "runs"
    assert run_sweep(path, out, *extra) == 2
    assert not out.exists(), "a bad sweep must fail before any study or trial dir is created"
    return capsys.readouterr().err


# --- grid cells with their own recipe -------------------------------------------------------------


def test_each_cell_trains_its_own_recipe_and_the_study_records_which(tmp_path):
    sweep = resolve_sweep(
        write_sweep(
            tmp_path,
            sampler={"type": "grid"},
            grid=[{RECIPE_KEY: str(LLAMA), "model.n_kv_head": 2}, {"train.lr": 0.01}],
            seeds=[0, 1],
        )
    )
    assert [c.recipe.resolve() for c in sweep.cells] == [LLAMA] * 2 + [GPT2] * 2
    # the llama cells keep n_kv_head; gpt2 has no such key, so its cells do not get it filled in
    assert [c.params[RECIPE_KEY] for c in sweep.cells] == [str(LLAMA)] * 2 + [str(GPT2)] * 2
    assert all(("model.n_kv_head" in c.values) == (c.recipe.resolve() == LLAMA) for c in sweep.cells)
    assert RECIPE_KEY not in sweep.cells[0].values, "the recipe is not a recipe override"
    assert sweep.cell_choices[RECIPE_KEY] == [str(LLAMA), str(GPT2)]
    # a trial of a cell records its recipe as a param, and its values are the overrides alone
    study = optuna.create_study()
    for cell in sweep.cells:
        study.enqueue_trial(cell.params, user_attrs={"cell": cell.index})
    for cell in sweep.cells:
        trial = study.ask()
        assert suggest_values(trial, sweep) == dict(cell.values)
        assert trial.params == cell.params
        assert sweep.recipe_of(trial) == cell.recipe
        study.tell(trial, 0.0)


def test_cells_are_validated_against_their_own_recipe(tmp_path, capsys):
    err = error_text(  # n_kv_head is a llama key: fine in the llama cell, a typo-like error in gpt2's
        tmp_path,
        capsys,
        sampler={"type": "grid"},
        grid=[{RECIPE_KEY: str(LLAMA), "model.n_kv_head": 2}, {RECIPE_KEY: str(GPT2), "model.n_kv_head": 2}],
    )
    assert "grid[1]" in err and "model.n_kv_head" in err and "grid[0]" not in err, err


def test_grid_keys_a_cell_leaves_out_take_its_own_recipes_value(tmp_path):
    short = write_recipe(tmp_path, "short", GPT2, train={"max_steps": 50, "lr": 0.02})
    sweep = resolve_sweep(
        write_sweep(
            tmp_path,
            sampler={"type": "grid"},
            grid=[{"train.lr": 0.001}, {RECIPE_KEY: str(short)}],
        )
    )
    assert [c.values["train.lr"] for c in sweep.cells] == [0.001, 0.02]
    # per-cell budgets: hyperband's max resource is the longest trial's
    assert [sweep.cell_steps(c) for c in sweep.cells] == [300, 50]
    assert sweep.total_steps == 300


def test_conditions_read_the_cells_recipe(tmp_path):
    sweep = resolve_sweep(
        write_sweep(
            tmp_path,
            sampler={"type": "grid"},
            grid=[{RECIPE_KEY: str(LLAMA)}, {RECIPE_KEY: str(GPT2)}],
            space={
                "model.n_kv_head": {"type": "categorical", "choices": [1, 2], "when": {"model.arch": "llama"}}
            },
        )
    )
    assert [(c.recipe.resolve(), c.values.get("model.n_kv_head")) for c in sweep.cells] == [
        (LLAMA, 1),
        (LLAMA, 2),
        (GPT2, None),
    ]


def test_base_recipe_may_be_left_out_only_when_every_cell_names_one(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    spec = {"study": "s", "sampler": {"type": "grid"}, "grid": [{RECIPE_KEY: str(GPT2)}, {"train.lr": 0.01}]}
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SweepError, match="`base_recipe:` is required.*unless every grid cell names"):
        resolve_sweep(path)
    spec["grid"][1][RECIPE_KEY] = str(LLAMA)
    path.write_text(yaml.safe_dump(spec))
    sweep = resolve_sweep(path)
    assert sweep.base_recipe is None
    assert [r.resolve() for r in sweep.recipes] == [GPT2, LLAMA]


def test_a_recipe_path_is_relative_to_the_sweep_file(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    write_recipe(tmp_path, "mine", GPT2, train={"max_steps": 7})
    path = tmp_path / "sub" / "s.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "study": "s",
                "sampler": {"type": "grid"},
                "grid": [{RECIPE_KEY: "../mine.yaml"}, {RECIPE_KEY: str(GPT2)}],
            }
        )
    )
    monkeypatch.chdir(REPO)  # anywhere but the sweep file's folder
    sweep = resolve_sweep(path)
    assert sweep.cells[0].recipe.resolve() == tmp_path / "mine.yaml"
    assert sweep.cells[0].params[RECIPE_KEY] == "../mine.yaml"  # recorded as the file writes it
    assert sweep.cell_steps(sweep.cells[0]) == 7


@pytest.mark.parametrize(
    ("grid", "expected"),
    [
        ([{RECIPE_KEY: "nowhere.yaml"}], ["grid[0].recipe 'nowhere.yaml' not found"]),
        ([{RECIPE_KEY: 3}], ["grid[0].recipe: give the path of a recipe file, got 3"]),
    ],
)
def test_bad_cell_recipes_are_named(tmp_path, capsys, grid, expected):
    err = error_text(tmp_path, capsys, sampler={"type": "grid"}, grid=grid)
    for text in expected:
        assert text in err, err


def test_overrides_are_checked_against_every_recipe(tmp_path, capsys):
    err = error_text(  # llama-only key in overrides, but a gpt2 cell gets it too
        tmp_path,
        capsys,
        sampler={"type": "grid"},
        grid=[{RECIPE_KEY: str(LLAMA)}, {RECIPE_KEY: str(GPT2)}],
        overrides={"model.n_kv_head": 2},
    )
    assert "overrides (recipe" in err and "gpt2_tiny" in err and "model.n_kv_head" in err, err


def test_the_trials_train_command_gets_its_cells_recipe(tmp_path, ledger):
    path = write_sweep(
        tmp_path,
        sampler={"type": "grid"},
        pruner={"type": "none"},
        grid=[{RECIPE_KEY: str(LLAMA), "train.lr": 0.001}, {"train.lr": 0.002}],
    )
    out = tmp_path / "runs"
    assert run_sweep(path, out) == 0
    started = {
        float(e["params"]["train.lr"]): Path(e["recipe"]).resolve()
        for e in read_ledger(ledger)
        if e["event"] == "start"
    }
    assert started == {0.001: LLAMA, 0.002: GPT2}
    assert all(RECIPE_KEY not in e["params"] for e in read_ledger(ledger)), "not passed as an override"
    trials = load_trials(out)
    assert [t.params[RECIPE_KEY] for t in trials] == [str(LLAMA), str(GPT2)]
    assert f"| {RECIPE_KEY} |" in (out / "s" / SUMMARY_MD).read_text()


def test_a_study_refuses_a_cell_whose_recipe_changed(tmp_path, ledger, capsys):
    out = tmp_path / "runs"
    grid = [{RECIPE_KEY: str(LLAMA)}, {"train.lr": 0.002}]
    assert run_sweep(write_sweep(tmp_path, sampler={"type": "grid"}, grid=grid), out) == 0
    grid[0][RECIPE_KEY] = str(GPT2)
    assert run_sweep(write_sweep(tmp_path, sampler={"type": "grid"}, grid=grid), out) == 2
    assert "differs in: cells" in capsys.readouterr().err


def test_a_study_refuses_another_base_recipe(tmp_path, ledger, capsys):
    out = tmp_path / "runs"
    assert run_sweep(write_sweep(tmp_path, sampler={"type": "grid"}, grid=[{"train.lr": 0.001}]), out) == 0
    path = write_sweep(tmp_path, sampler={"type": "grid"}, grid=[{"train.lr": 0.001}])
    spec = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**spec, "base_recipe": str(LLAMA)}))
    assert run_sweep(path, out) == 2
    assert "differs in: recipe" in capsys.readouterr().err


# --- sizes ----------------------------------------------------------------------------------------

SIZES = {"smoke": {"train.max_steps": 4}, "cpu": {"train.max_steps": 8, "eval.every_n_steps": 4}}


def test_a_size_applies_after_the_files_overrides_and_before_the_command_lines(tmp_path):
    path = write_sweep(
        tmp_path,
        sampler={"type": "grid"},
        grid=[{"train.lr": 0.001}],
        sizes=SIZES,
        overrides={"train.max_steps": 2},
    )
    assert resolve_sweep(path).overrides["train.max_steps"] == 2 and resolve_sweep(path).size is None
    cpu = resolve_sweep(path, size="cpu")
    assert (
        cpu.size == "cpu"
        and cpu.overrides["train.max_steps"] == 8
        and cpu.overrides["eval.every_n_steps"] == 4
    )
    assert cpu.total_steps == 8
    assert resolve_sweep(path, ["train.max_steps=3"], size="cpu").overrides["train.max_steps"] == 3


def test_the_trials_command_line_gets_the_sizes_overrides(tmp_path, ledger):
    path = write_sweep(
        tmp_path, sampler={"type": "grid"}, pruner={"type": "none"}, grid=[{"train.lr": 0.001}], sizes=SIZES
    )
    assert run_sweep(path, tmp_path / "runs", "--size", "smoke") == 0
    (start,) = [e for e in read_ledger(ledger) if e["event"] == "start"]
    assert start["params"]["train.max_steps"] == "4"


@pytest.mark.parametrize(
    ("fields", "extra", "expected"),
    [
        (
            {"sizes": SIZES},
            ["--size", "smok"],
            ["unknown size 'smok'", "did you mean 'smoke'", "sizes: smoke, cpu"],
        ),
        ({}, ["--size", "smoke"], ["--size 'smoke': this sweep file defines no `sizes:`"]),
        (  # a typo in a size that is not chosen still fails: every size is checked
            {"sizes": {**SIZES, "gpu": {"train.max_stepz": 10}}},
            ["--size", "smoke"],
            ["sizes.gpu", "did you mean 'train.max_steps'"],
        ),
        ({"sizes": {"smoke": {"train": {"max_steps": 4}}}}, [], ["sizes.smoke.train: give dotted keys"]),
    ],
)
def test_bad_sizes_fail_clearly(tmp_path, capsys, fields, extra, expected):
    err = error_text(tmp_path, capsys, *extra, sampler={"type": "grid"}, grid=[{"train.lr": 0.001}], **fields)
    for text in expected:
        assert text in err, err


def test_a_cells_own_size_values_join_that_cell_only_at_that_size(tmp_path):
    path = write_sweep(
        tmp_path,
        sampler={"type": "grid"},
        grid=[
            {RECIPE_KEY: str(LLAMA), "model.n_kv_head": 4, "sizes": {"cpu": {"model.n_kv_head": 2}}},
            {"train.lr": 0.001},
        ],
        sizes=SIZES,
    )
    cpu, smoke, none = (resolve_sweep(path, size=s) for s in ("cpu", "smoke", None))
    assert [c.values.get("model.n_kv_head") for c in cpu.cells] == [2, None]
    assert [c.values.get("model.n_kv_head") for c in smoke.cells] == [4, None]
    assert [c.values.get("model.n_kv_head") for c in none.cells] == [4, None]
    assert all("sizes" not in c.params for sweep in (cpu, smoke, none) for c in sweep.cells)
    assert cpu.overrides["train.max_steps"] == 8, "the file's sizes still apply to every cell"


def test_the_trials_command_line_gets_its_cells_size_values(tmp_path, ledger):
    path = write_sweep(
        tmp_path,
        sampler={"type": "grid"},
        pruner={"type": "none"},
        grid=[{"train.lr": 0.001, "sizes": {"smoke": {"train.lr": 0.002}}}],
        sizes=SIZES,
    )
    assert run_sweep(path, tmp_path / "runs", "--size", "smoke") == 0
    (start,) = [e for e in read_ledger(ledger) if e["event"] == "start"]
    assert start["params"]["train.lr"] == "0.002"


@pytest.mark.parametrize(
    ("cell_sizes", "expected"),
    [
        ({"gpu": {"train.lr": 0.1}}, ["grid[0].sizes.gpu: no such size", "sizes: smoke, cpu"]),
        ({"cpus": {"train.lr": 0.1}}, ["grid[0].sizes.cpus", "did you mean 'cpu'"]),
        ({"cpu": 3}, ["grid[0].sizes: give a mapping of size name"]),
        ({"cpu": {"train": {"lr": 0.1}}}, ["grid[0].sizes.cpu.train: give dotted keys"]),
        # a typo in a size that is not chosen still fails: every size of every cell is checked
        ({"cpu": {"train.lrr": 0.1}}, ["grid[0].sizes.cpu", "did you mean 'train.lr'"]),
    ],
)
def test_bad_cell_sizes_fail_clearly(tmp_path, capsys, cell_sizes, expected):
    err = error_text(
        tmp_path,
        capsys,
        "--size",
        "smoke",
        sampler={"type": "grid"},
        grid=[{"train.lr": 0.001, "sizes": cell_sizes}],
        sizes=SIZES,
    )
    for text in expected:
        assert text in err, err


def test_a_study_opened_with_one_size_refuses_another(tmp_path, ledger, capsys):
    path = write_sweep(tmp_path, sampler={"type": "grid"}, grid=[{"train.lr": 0.001}], sizes=SIZES)
    out = tmp_path / "runs"
    assert run_sweep(path, out, "--size", "smoke") == 0
    capsys.readouterr()
    assert run_sweep(path, out, "--size", "cpu") == 2
    err = capsys.readouterr().err
    assert (
        "created with --size smoke; this launcher has --size cpu" in err and "Run it with --size smoke" in err
    )
    assert run_sweep(path, out) == 2
    assert "this launcher has no --size" in capsys.readouterr().err
    assert run_sweep(path, out, "--size", "smoke") == 0  # the same size continues the study


def test_a_description_is_shown_in_the_summary(tmp_path, ledger):
    path = write_sweep(
        tmp_path, description="Does a lower lr help?", sampler={"type": "grid"}, grid=[{"train.lr": 0.001}]
    )
    assert run_sweep(path, tmp_path / "runs") == 0
    assert "Does a lower lr help?" in (tmp_path / "runs" / "s" / SUMMARY_MD).read_text()


def test_a_study_recorded_by_an_older_version_without_the_new_keys_is_joined(tmp_path, ledger):
    from mosaics_lab.sweeps.storage import make_storage
    from mosaics_lab.sweeps.study import FINGERPRINT_ATTR, open_study

    path = write_sweep(tmp_path, sampler={"type": "grid"}, grid=[{"train.lr": 0.001}])
    sweep = resolve_sweep(path)
    out = tmp_path / "runs" / "s"
    study = open_study(sweep, make_storage(sweep, out))
    old = {k: v for k, v in sweep.fingerprint().items() if k not in ("recipe", "size")}
    study.set_user_attr(FINGERPRINT_ATTR, old)
    open_study(sweep, make_storage(sweep, out))  # no "differs in" error


def test_hyperband_max_resource_is_the_longest_cell(tmp_path):
    short = write_recipe(tmp_path, "short", GPT2, train={"max_steps": 50})
    sweep = resolve_sweep(
        write_sweep(
            tmp_path,
            sampler={"type": "grid"},
            pruner={"type": "hyperband", "warmup_steps": 5},
            grid=[{RECIPE_KEY: str(short)}, {"train.max_steps": 120}],
        )
    )
    assert build_pruner(sweep)._max_resource == 120
