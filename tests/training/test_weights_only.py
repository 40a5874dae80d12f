"""Checkpoints never run code: every command that loads a file loads it weights-only, and a crafted
pickle (here one that would only create a marker file) is refused with a named error."""

from __future__ import annotations

import pathlib

import pytest
import torch

from mosaics_lab import constants as C
from mosaics_lab.cli import EXIT_USER_ERROR, main
from mosaics_lab.config import load_recipe
from mosaics_lab.config.loader import recipe_to_dict
from mosaics_lab.training.module import RECIPE_KEY
from mosaics_lab.training.run import train
from tests.conftest import REPO, tiny_overrides

GPT2_TINY = REPO / "recipes" / "gpt2_tiny.yaml"


class Payload:
    """Unpickling this calls ``Path.touch(marker)``: what a malicious checkpoint would do, harmlessly."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _crafted(path: pathlib.Path, marker: pathlib.Path, recipe_dict: dict | None = None) -> pathlib.Path:
    """A file that looks like one of our checkpoints, with the payload beside the weights."""
    ckpt = {"state_dict": {}, "global_step": 3, "epoch": 0, "payload": Payload(marker)}
    if recipe_dict is not None:
        ckpt[RECIPE_KEY] = recipe_dict
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def trained_run(stories_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("wo") / "run"
    train(load_recipe(GPT2_TINY, [*tiny_overrides(stories_dir, run), "eval.batches=0"]))
    return run


def test_our_own_checkpoints_load_weights_only(trained_run):
    ckpt = torch.load(trained_run / C.CHECKPOINT_DIR / C.LAST_CHECKPOINT, weights_only=True)
    assert ckpt["global_step"] == 2 and RECIPE_KEY in ckpt


@pytest.mark.parametrize(
    "command",
    [
        lambda ckpt: ["eval", str(ckpt), "--task", "val"],
        lambda ckpt: ["generate", str(ckpt), "--max-new-tokens", "2"],
    ],
    ids=["eval", "generate"],
)
def test_a_crafted_checkpoint_is_refused_by_eval_and_generate(command, trained_run, tmp_path, capsys):
    marker = tmp_path / "marker"
    recipe = torch.load(trained_run / C.CHECKPOINT_DIR / C.LAST_CHECKPOINT, weights_only=True)[RECIPE_KEY]
    evil = _crafted(tmp_path / "shared.ckpt", marker, recipe)
    assert main(command(evil)) == EXIT_USER_ERROR
    assert not marker.exists(), "the checkpoint ran code"
    err = capsys.readouterr().err
    assert "refused" in err and "would run code" in err and str(evil) in err


def test_a_crafted_last_ckpt_is_refused_on_resume(stories_dir, tmp_path):
    run = tmp_path / "run"
    overrides = [*tiny_overrides(stories_dir, run, steps=2), "eval.batches=0"]
    train(load_recipe(GPT2_TINY, overrides))
    marker = tmp_path / "marker"
    recipe = load_recipe(GPT2_TINY, [*overrides, "train.max_steps=3"])
    _crafted(run / C.CHECKPOINT_DIR / C.LAST_CHECKPOINT, marker, recipe_to_dict(recipe))
    from mosaics_lab.training.safe_load import UnsafeCheckpointError

    with pytest.raises(UnsafeCheckpointError, match="refused"):
        train(recipe)
    assert not marker.exists(), "the checkpoint ran code"
    assert (run / C.CHECKPOINT_DIR / C.LAST_CHECKPOINT).exists()  # refused, not deleted


def test_consolidate_refuses_a_crafted_sharded_checkpoint(tmp_path, capsys):
    shards = tmp_path / "last.ckpt"
    shards.mkdir()
    marker = tmp_path / "marker"
    from lightning.fabric.utilities.load import _METADATA_FILENAME

    _crafted(shards / _METADATA_FILENAME, marker, {"name": "x"})
    assert main(["consolidate", str(shards), str(tmp_path / "out.ckpt")]) == EXIT_USER_ERROR
    assert not marker.exists(), "the checkpoint ran code"
    assert "refused" in capsys.readouterr().err
    assert not (tmp_path / "out.ckpt").exists()


def test_consolidate_of_a_directory_with_only_meta_is_a_named_error(trained_run, tmp_path, capsys):
    shards = tmp_path / "last.ckpt"
    shards.mkdir()
    from lightning.fabric.utilities.load import _METADATA_FILENAME

    ckpt = torch.load(trained_run / C.CHECKPOINT_DIR / C.LAST_CHECKPOINT, weights_only=True)
    torch.save({k: v for k, v in ckpt.items() if k != "state_dict"}, shards / _METADATA_FILENAME)
    assert main(["consolidate", str(shards), str(tmp_path / "out.ckpt")]) == EXIT_USER_ERROR
    assert "not a complete sharded checkpoint" in capsys.readouterr().err
