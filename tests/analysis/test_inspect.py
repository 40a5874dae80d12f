"""``mosaics-lab inspect``: the figures it writes for a trained mosaic (retrieval weights with the
answers of a task prompt marked, bandwidths, key time constants), as PNGs and TensorBoard images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mosaics_lab.analysis.inspect import InspectError, InspectOptions, answer_pairs, inspect_run
from mosaics_lab.config import load_recipe
from mosaics_lab.data.tasks.base import IGNORE_INDEX
from mosaics_lab.training.run import run_tensorboard_dir, train
from tests.conftest import REPO, tiny_overrides
from tests.evaluation.test_eval_cli import PNG_MAGIC, task_overrides


@pytest.fixture(scope="module")
def mqar_v2_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("mqar")
    overrides = task_overrides(tmp / "data", tmp / "run") + [
        "data.generate_args.seq_len=32",
        "data.generate_args.num_kv_pairs=4",
        "model.block_size=32",
    ]
    return train(load_recipe(REPO / "recipes" / "icl" / "mqar_mosaic_v2.yaml", overrides))


@pytest.fixture(scope="module")
def v1_stories_run(stories_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("v1") / "run"
    return train(load_recipe(REPO / "recipes" / "mosaic_v1_tiny.yaml", tiny_overrides(stories_dir, run)))


def image_tags(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_tensorboard_dir(run_dir)), size_guidance={"images": 0})
    acc.Reload()
    return set(acc.Tags()["images"])


def test_answer_pairs_are_the_pairs_whose_value_peeks_at_the_target():
    # key-value context "5 9 6 8", then the query 6 whose answer is 8: the pair at 6's position (2)
    # holds the value that peeks at token 3 = 8.
    ids = np.array([5, 9, 6, 8, 1, 6])
    labels = np.full(6, IGNORE_INDEX)
    labels[5] = 8
    assert answer_pairs(ids, labels) == {5: [2]}


def test_a_task_prompt_gives_every_figure_per_layer_and_memory_and_tensorboard_images(mqar_v2_run):
    written = inspect_run(mqar_v2_run, InspectOptions(task="mqar"))
    expected = {f"retrievals_{m}_layer{layer}" for m in ("stm", "ltm") for layer in (0, 1)}
    assert set(written) == expected | {"bandwidths", "key_time_constants"}
    for path in written.values():
        assert path.parent == mqar_v2_run / "inspect"
        assert path.read_bytes()[:8] == PNG_MAGIC
    assert image_tags(mqar_v2_run) >= {f"inspect/{name}" for name in written}


def test_layer_and_memory_select_one_retrieval_figure(mqar_v2_run, tmp_path):
    written = inspect_run(
        mqar_v2_run, InspectOptions(task="mqar", layer=1, memory="ltm", out_dir=tmp_path, tensorboard=False)
    )
    assert set(written) == {"retrievals_ltm_layer1", "bandwidths", "key_time_constants"}
    assert all(p.parent == tmp_path for p in written.values())


def test_a_window_zooms_into_the_prompt_and_keeps_the_answers_that_fall_inside():
    from mosaics_lab.analysis.inspect import Prompt, crop, parse_window

    prompt = Prompt(list(range(10)), [str(i) for i in range(10)], {8: [2, 5], 3: [1]})
    assert parse_window("4:", 10) == (4, 10)
    zoomed = crop(prompt, *parse_window("4:10", 10))
    assert zoomed.ids == [4, 5, 6, 7, 8, 9] and zoomed.answers == {4: [1]}


def test_a_text_prompt_on_mosaic_v1_shows_the_contextual_and_persistent_memories(v1_stories_run, tmp_path):
    written = inspect_run(
        v1_stories_run,
        InspectOptions(prompt="Once upon a time", layer=0, out_dir=tmp_path, tensorboard=False),
    )
    assert set(written) == {
        "retrievals_cmem_layer0",
        "retrievals_pmem_layer0",
        "bandwidths",
        "key_time_constants",
    }


@pytest.mark.parametrize(
    "options, message",
    [
        (InspectOptions(), "exactly one of --prompt"),
        (InspectOptions(prompt="a", task="mqar"), "exactly one of --prompt"),
        (InspectOptions(task="mqar", memory="cmem"), "has stm, ltm"),
        (InspectOptions(task="mqar", layer=5), "--layer must be in 0..1"),
        (InspectOptions(task="mqar", window="20:10"), "--window must be START:END"),
    ],
)
def test_bad_requests_say_what_to_change(mqar_v2_run, options, message):
    with pytest.raises(InspectError, match=message):
        inspect_run(mqar_v2_run, options)


def test_a_transformer_has_nothing_to_inspect(tmp_path):
    recipe = load_recipe(
        REPO / "recipes" / "icl" / "mqar_llama.yaml",
        task_overrides(tmp_path / "data", tmp_path / "run", steps=1)
        + ["data.generate_args.seq_len=32", "data.generate_args.num_kv_pairs=4", "model.block_size=32"],
    )
    run = train(recipe)
    with pytest.raises(InspectError, match="no associative memories"):
        inspect_run(run, InspectOptions(task="mqar"))


def test_the_module_entry_point_takes_the_cli_arguments(mqar_v2_run, tmp_path, capsys):
    from mosaics_lab.analysis.inspect import main

    assert (
        main([str(mqar_v2_run), "--task", "mqar", "--layer", "0", "--out", str(tmp_path), "--no-tensorboard"])
        == 0
    )
    assert "retrievals_stm_layer0" in capsys.readouterr().out
    assert main([str(mqar_v2_run), "--task", "mqar", "--window", "9:3"]) == 2


def test_mosaics_lab_inspect_is_a_subcommand_that_writes_the_figures_asked_for(mqar_v2_run, tmp_path, capsys):
    from mosaics_lab.cli import main

    out = tmp_path / "figs"
    args = ["inspect", str(mqar_v2_run), "--task", "mqar", "--layer", "1", "--memory", "ltm"]
    assert main([*args, "--out", str(out), "--no-tensorboard"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "bandwidths.png",
        "key_time_constants.png",
        "retrievals_ltm_layer1.png",
    ]
    assert f"retrievals_ltm_layer1: {out / 'retrievals_ltm_layer1.png'}" in capsys.readouterr().out


def test_mosaics_lab_inspect_of_a_folder_that_is_no_run_is_a_one_line_error(tmp_path, capsys):
    from mosaics_lab.cli import EXIT_USER_ERROR, main

    assert main(["inspect", str(tmp_path), "--prompt", "hello"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("mosaics-lab: error: ") and str(tmp_path) in err and "Traceback" not in err
