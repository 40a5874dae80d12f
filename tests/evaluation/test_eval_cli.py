"""``mosaics-lab eval`` end to end on tiny trained runs: the JSON, the PNG and the TensorBoard scalars
it writes, the task config taken from the run's recipe, gpt2's length limit, a mosaic_v2 evaluated
with a memory removed (``--ablate``), and bad inputs."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch

from mosaics_lab import constants as C
from mosaics_lab.cli import EXIT_USER_ERROR, main
from mosaics_lab.config import load_recipe
from mosaics_lab.training.run import run_tensorboard_dir, train
from tests.conftest import REPO, task_overrides, tiny_overrides

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def induction_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("induction")
    recipe = load_recipe(
        REPO / "recipes" / "icl" / "induction_llama.yaml", task_overrides(tmp / "data", tmp / "run")
    )
    return train(recipe)


@pytest.fixture(scope="module")
def gpt2_stories_run(stories_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("gpt2") / "run"
    return train(load_recipe(REPO / "recipes" / "gpt2_tiny.yaml", tiny_overrides(stories_dir, run)))


@pytest.fixture(scope="module")
def mosaic_v2_stories_run(stories_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("mosaic_v2") / "run"
    return train(load_recipe(REPO / "recipes" / "mosaic_v2_tiny.yaml", tiny_overrides(stories_dir, run)))


def eval_argv(run: Path, options: str) -> list[str]:
    return ["eval", str(run), *shlex.split(options)]


def scalars(run_dir: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_tensorboard_dir(run_dir)))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)} if tag in acc.Tags()["scalars"] else {}


def image_tags(run_dir: Path) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_tensorboard_dir(run_dir)), size_guidance={"images": 0})
    acc.Reload()
    return acc.Tags()["images"]


def test_eval_writes_json_png_and_tensorboard_with_the_length_as_step(induction_run, capsys):
    assert main(eval_argv(induction_run, "--task induction --lengths 1x,2x --batches 2 --batch-size 4")) == 0
    record = json.loads((induction_run / "eval" / "induction.json").read_text())
    assert record["task"] == "induction" and record["axis"] == "length" and record["global_step"] == 2
    assert record["arch"] == "llama" and record["params"] > 0 and record["which"] == "last"
    assert [p["length"] for p in record["points"]] == [128, 256]
    assert all(p["status"] == "ok" and p["num_examples"] == 8 for p in record["points"])
    # the run trained on induction: its config, not the task's defaults (seq_len 256)
    assert record["task_config_source"] == "recipe"
    assert record["info"]["task_config"] == {"vocab_size": 16, "seq_len": 128}
    assert (induction_run / "eval" / "induction.png").read_bytes()[:8] == PNG_MAGIC
    accuracy = scalars(induction_run, "eval/induction/accuracy")
    assert sorted(accuracy) == [128, 256]
    assert accuracy[128] == pytest.approx(record["points"][0]["metrics"]["accuracy"])
    assert scalars(induction_run, "eval/induction/accuracy_at_1x") == {2: pytest.approx(accuracy[128])}
    # the HPARAMS column of the 1x point, at the checkpoint's step (2x is no column)
    assert scalars(induction_run, "hp/induction/accuracy@1x") == {2: pytest.approx(accuracy[128])}
    assert scalars(induction_run, "hp/induction/accuracy@2x") == {}
    assert "length 256: accuracy" in capsys.readouterr().out
    assert "eval/induction" in image_tags(induction_run)  # the figure, in TensorBoard's IMAGES tab


def test_eval_of_a_checkpoint_file_writes_into_its_run(induction_run):
    ckpt = induction_run / C.CHECKPOINT_DIR / C.LAST_CHECKPOINT
    assert main(eval_argv(ckpt, "--task val --batches 1 --batch-size 4")) == 0
    record = json.loads((induction_run / "eval" / "val.json").read_text())
    assert record["checkpoint"] == str(ckpt) and record["metrics"]["loss"] > 0
    assert record["metrics"]["ppl"] == pytest.approx(2.718281828 ** record["metrics"]["loss"], rel=1e-4)
    assert scalars(induction_run, "eval/val/loss") == {2: pytest.approx(record["metrics"]["loss"])}


def test_task_args_override_the_run_config(induction_run, tmp_path):
    options = (
        f"--task induction --lengths 64 --task-arg vocab_size=8 --batches 1 --batch-size 2 --out {tmp_path}"
    )
    assert main(eval_argv(induction_run, options)) == 0
    record = json.loads((tmp_path / "induction.json").read_text())
    assert record["task_config_source"] == "recipe+task-args"
    assert record["info"]["task_config"]["vocab_size"] == 8 and record["points"][0]["length"] == 64


def test_gpt2_extrapolation_is_na_beyond_block_size_and_exits_zero(gpt2_stories_run, capsys):
    options = "--task extrapolation --lengths 1x,2x --batches 2 --batch-size 2"
    assert main(eval_argv(gpt2_stories_run, options)) == 0
    record = json.loads((gpt2_stories_run / "eval" / "extrapolation.json").read_text())
    one, two = record["points"]
    assert (one["length"], one["status"]) == (32, "ok") and one["metrics"]["loss"] > 0
    assert (two["length"], two["status"]) == (64, "n/a") and "learned positions" in two["reason"]
    assert list(record["curves"]) == ["32"] and len(record["curves"]["32"]) == 32
    assert sorted(scalars(gpt2_stories_run, "eval/extrapolation/loss")) == [32]
    assert "n/a" in capsys.readouterr().out


def test_per_position_on_a_token_stream_gives_a_full_curve_and_the_gain(gpt2_stories_run, capsys):
    assert main(eval_argv(gpt2_stories_run, "--task per_position --batches 2 --batch-size 2")) == 0
    record = json.loads((gpt2_stories_run / "eval" / "per_position.json").read_text())
    assert record["version"] == 2
    curve = record["curves"]["loss"]
    assert len(curve) == 32 and None not in curve
    # T = 32 (< 128): the second quarter (8..15) against the last one (24..31)
    assert record["info"]["gain_reference_positions"] == [8, 16]
    assert record["metrics"]["loss_reference"] == pytest.approx(sum(curve[8:16]) / 8)
    assert record["metrics"]["in_context_gain"] == pytest.approx(
        record["metrics"]["loss_reference"] - sum(curve[24:]) / 8
    )
    definition = record["info"]["definitions"]["in_context_gain"]
    assert definition.startswith("mean loss at positions 8-15 minus mean loss over the last quarter")
    assert f"(in_context_gain: {definition})" in capsys.readouterr().out
    slope = record["metrics"]["loss_slope_per_doubling"]
    assert scalars(gpt2_stories_run, "hp/per_position/loss_slope_per_doubling") == {2: pytest.approx(slope)}
    assert sorted(scalars(gpt2_stories_run, "eval/per_position/loss")) == list(range(32))


def test_an_eval_without_the_ltm_is_recorded_beside_the_full_one(mosaic_v2_stories_run, capsys):
    run = mosaic_v2_stories_run
    assert main(eval_argv(run, "--task val --batches 2 --batch-size 2")) == 0
    assert main(eval_argv(run, "--task val --batches 2 --batch-size 2 --ablate ltm")) == 0
    assert "with its ltm removed" in capsys.readouterr().out
    full = json.loads((run / "eval" / "val.json").read_text())
    removed = json.loads((run / "eval" / "val-no_ltm.json").read_text())
    assert (full["name"], full["ablate"]) == ("val", None)
    assert (removed["name"], removed["ablate"], removed["task"]) == ("val-no_ltm", "ltm", "val")
    assert (run / "eval" / "val-no_ltm.png").read_bytes()[:8] == PNG_MAGIC
    assert abs(removed["metrics"]["loss"] - full["metrics"]["loss"]) > 1e-4  # the LTM mattered
    assert scalars(run, "eval/val/loss") == {2: pytest.approx(full["metrics"]["loss"])}
    assert scalars(run, "eval/val-no_ltm/loss") == {2: pytest.approx(removed["metrics"]["loss"])}
    # the HPARAMS column is the full model's, never overwritten by an ablation
    assert scalars(run, "hp/val/loss") == {2: pytest.approx(full["metrics"]["loss"])}
    assert "eval/val-no_ltm" in image_tags(run)


def test_the_ablated_eval_is_the_model_with_the_memorys_projection_columns_zeroed(mosaic_v2_stories_run):
    from mosaics_lab.evaluation.runner import EvalOptions, _evaluate_lm, evaluate
    from mosaics_lab.training.checkpoint import find_checkpoint, load_trained

    options = EvalOptions(batches=2, batch_size=2, progress=False, tensorboard=False, ablate="stm")
    record = evaluate(mosaic_v2_stories_run, "val", options)  # the Python API the CLI calls
    assert record["name"] == "val-no_stm" and record["ablate"] == "stm"

    recipe, model = load_trained(find_checkpoint(mosaic_v2_stories_run, "last"), map_location="cpu")
    C = recipe.model.n_embd
    with torch.no_grad():
        for block in model.blocks:  # W_o reads [STM ; LTM]: the STM's C columns set to zero
            block.c_proj.weight[:, :C] = 0.0
    by_hand = _evaluate_lm("val", recipe, model.eval(), EvalOptions(batches=2, batch_size=2), [])
    assert by_hand.metrics["loss"] == pytest.approx(record["metrics"]["loss"], rel=1e-6)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "{tmp}/no_such_run", "--task", "val"], "no such run directory"),
        (["eval", "{run}", "--task", "mqra"], "did you mean 'mqar'"),
        (["eval", "{run}", "--task", "induction", "--lengths", "1x,2y"], "--lengths: cannot read '2y'"),
        (["eval", "{run}", "--task", "manyshot", "--shots", "1,x"], "--shots"),
        (["eval", "{run}", "--task", "val", "--which", "first"], "--which must be one of last, best"),
        (["eval", "{run}", "--task", "mqar", "--task-arg", "num_kv_pair=8"], "did you mean 'num_kv_pairs'"),
        (["eval", "{run}", "--task", "mqar", "--task-arg", "novalue"], "KEY=VALUE"),
        (["eval", "{run}", "--task", "mqar"], "uses token ids 0 .. 8191"),
        (["eval", "{run}", "--task", "extrapolation"], "use --task induction or --task multidoc_qa"),
        (["eval", "{run}", "--task", "val", "--ablate", "ltn"], "--ablate 'ltn' (did you mean 'ltm'?)"),
        (["eval", "{run}", "--task", "val", "--ablate", "ltm"], "this run's model is llama"),
    ],
)
def test_bad_inputs_exit_2_with_a_clear_message(induction_run, tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, run=induction_run) for a in argv]
    assert main(argv) == EXIT_USER_ERROR
    assert message in capsys.readouterr().err
