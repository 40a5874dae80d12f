"""Bad inputs are named errors (exit 2) before anything is written: values out of range, run dirs that
would escape log.root, OmegaConf resolvers, a vocabulary smaller than the data's, CLI ranges."""

from __future__ import annotations

import pytest

from mosaics_lab.cli import EXIT_USER_ERROR, main
from mosaics_lab.sweeps.spec import SweepError, load_sweep_spec
from tests.conftest import REPO, tiny_overrides

GPT2_TINY = str(REPO / "recipes" / "gpt2_tiny.yaml")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=nan", "train.lr must be a finite number > 0"),
        ("train.lr=inf", "train.lr must be a finite number > 0"),
        ("train.weight_decay=-0.1", "train.weight_decay must be a finite number >= 0"),
        ("train.beta2=1.5", "train.beta2 must be in [0, 1)"),
        ("log.run_id=../../escaped", "log.run_id must be a plain folder name"),
        ("log.run_id={abs}", "log.run_id must be a plain folder name"),
        ("log.run_id=a/b", "log.run_id must be a plain folder name"),
        ("name=..", "name must be a plain folder name"),
        ("data.path=${{oc.env:HOME}}", "calls an OmegaConf resolver"),
    ],
)
def test_a_bad_command_line_value_is_refused_naming_the_command_line(
    override, message, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "deep" / "er" / "runs"
    override = override.format(abs=tmp_path / "absolute")
    assert main(["train", GPT2_TINY, f"log.root={root}", override]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert message in err and "command line" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "something was written"


def test_a_resolver_in_a_recipe_file_is_refused_naming_the_file(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"base: {GPT2_TINY}\nlog:\n  root: ${{oc.env:HOME}}/runs\n")
    assert main(["train", str(recipe), "--print-config"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert str(recipe) in err and "'log.root'" in err and "resolver" in err


def test_a_plain_interpolation_of_another_key_is_allowed(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"base: {GPT2_TINY}\nlog:\n  run_id: ${{name}}\n")
    assert main(["train", str(recipe), "--print-config"]) == 0
    assert "run_id: gpt2_tiny" in capsys.readouterr().out


def test_a_resolver_in_a_sweep_file_is_refused(tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"study: s\nbase_recipe: {GPT2_TINY}\nstorage: ${{oc.env:HOME}}/j.log\n")
    with pytest.raises(SweepError, match="resolver"):
        load_sweep_spec(sweep)


def test_an_explicit_run_dir_holding_other_files_is_refused_and_left_alone(stories_dir, tmp_path, capsys):
    data_like = tmp_path / "mydata"
    data_like.mkdir()
    (data_like / "manifest.json").write_text("{}")
    args = ["train", GPT2_TINY, *tiny_overrides(stories_dir, data_like)]
    assert main(args) == EXIT_USER_ERROR
    assert "already holds files that are not a run (manifest.json)" in capsys.readouterr().err
    assert sorted(p.name for p in data_like.iterdir()) == ["manifest.json"]


def test_a_vocab_size_below_the_datas_is_refused_before_training(stories_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", GPT2_TINY, *tiny_overrides(stories_dir, run), "model.vocab_size=100"]) == 2
    assert "model.vocab_size=100 is smaller than the vocabulary" in capsys.readouterr().err
    assert not run.exists()


@pytest.mark.parametrize(
    "args",
    [["generate", "RUN", "--top-k", "0"], ["generate", "RUN", "--temperature", "nan"]],
    ids=["top-k", "temperature"],
)
def test_generate_checks_its_argument_ranges(args, tmp_path, capsys):
    args = [str(tmp_path) if a == "RUN" else a for a in args]
    assert main(args) == EXIT_USER_ERROR
    assert "must be" in capsys.readouterr().err


def test_eval_checks_its_argument_ranges(tmp_path, capsys):
    assert main(["eval", str(tmp_path), "--task", "val", "--batches", "0"]) == EXIT_USER_ERROR
    assert "--batches and --batch-size must be >= 1" in capsys.readouterr().err
