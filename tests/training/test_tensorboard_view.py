"""What a researcher sees in TensorBoard, read from a real ``tensorboard`` server's HTTP data API (the
requests its web page makes): the run's display name, the distinguishing keys first in HPARAMS, an
eval's headline metric as an HPARAMS column, the scalars of one tag, no ``epoch`` chart, the memory
diagnostics grouped per layer."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mosaics_lab import constants as C
from mosaics_lab.config import load_recipe
from mosaics_lab.evaluation.runner import EvalOptions, evaluate
from mosaics_lab.training.callbacks import memory_layout, read_jsonl_rows
from mosaics_lab.training.run import train
from tests.conftest import REPO, tiny_overrides

RUN_NAME = "mosaic_v2_tiny lr=0.0037 wd=0.19"
SERVER_START_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TensorBoard:
    def __init__(self, base: str) -> None:
        self.base = base

    def get(self, route: str, **params: str) -> object:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.base}{route}{query}", timeout=20) as response:
            return json.loads(response.read())

    def post(self, route: str, body: dict) -> object:
        request = urllib.request.Request(
            f"{self.base}{route}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "X-XSRF-Protected": "1"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=20) as response:
            return json.loads(response.read())


@pytest.fixture(scope="module")
def logdir(stories_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tb") / "runs"
    overrides = tiny_overrides(stories_dir, root / "trial-0000") + [
        "train.lr=0.0037",
        "train.weight_decay=0.19",
        # as the sweep launcher passes them: the swept keys
        'log.compare_keys=["train.lr", "train.weight_decay"]',
    ]
    run_dir = train(load_recipe(REPO / "recipes" / "mosaic_v2_tiny.yaml", overrides))
    # `mosaics-lab eval RUN --task val` after training: its loss becomes the HPARAMS column hp/val/loss
    evaluate(run_dir, "val", EvalOptions(batches=1, batch_size=2, progress=False))
    return root


@contextlib.contextmanager
def serve_tensorboard(logdir: Path) -> Iterator[TensorBoard]:
    """A ``tensorboard`` server on ``logdir`` (a free local port), once it serves a run; then stopped."""
    port = free_port()
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--load_fast", "false", "--reload_interval", "1"]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        board = TensorBoard(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                if board.get("/data/runs"):
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            if server.poll() is not None:
                pytest.fail(f"tensorboard exited {server.returncode}: {server.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"tensorboard served no run within {SERVER_START_S} s")
            time.sleep(0.5)
        yield board
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        server.stderr.close()


@pytest.fixture(scope="module")
def tensorboard(logdir):
    with serve_tensorboard(logdir) as board:
        yield board


def test_tensorboard_shows_the_run_under_its_human_name(tensorboard):
    assert tensorboard.get("/data/runs") == [f"trial-0000/{RUN_NAME}"]


def test_hparams_lists_the_swept_keys_first_and_the_eval_metrics_as_columns(tensorboard, logdir):
    experiment = tensorboard.post("/data/plugin/hparams/experiment", {"experimentName": ""})
    names = [h["name"] for h in experiment["hparamInfos"]]
    differs = [h["name"] for h in experiment["hparamInfos"] if h.get("differs")]
    # the web page sorts by `differs` and shows the first five: these three, then two others
    assert names[:3] == ["model.arch", "train.lr", "train.weight_decay"] == differs
    assert {"data.path", "model.n_layer", "seed"} <= set(names[3:])
    columns = [m["name"]["tag"] for m in experiment["metricInfos"]]
    # the training losses, then every eval's headline metrics (columns whether or not evaluated yet)
    assert columns == [C.HP_VAL_LOSS, C.HP_TRAIN_LOSS, *C.HP_EVAL_METRICS]
    assert {"hp/val/loss", "hp/mqar/accuracy", "hp/extrapolation/loss@4x"} <= set(columns)

    groups = tensorboard.post(
        "/data/plugin/hparams/session_groups",
        {
            "experimentName": "",
            "allowedStatuses": ["STATUS_SUCCESS", "STATUS_UNKNOWN", "STATUS_RUNNING", "STATUS_FAILURE"],
            "colParams": [
                {"hparam": "train.lr"},
                {"metric": {"tag": C.HP_VAL_LOSS}},
                {"metric": {"tag": "hp/val/loss"}, "order": "ORDER_ASC"},
            ],
            "startIndex": 0,
            "sliceSize": 10,
        },
    )
    (group,) = groups["sessionGroups"]
    assert group["name"] == f"trial-0000/{RUN_NAME}"
    assert group["hparams"]["train.lr"] == pytest.approx(0.0037)
    assert group["hparams"]["model.arch"] == "mosaic_v2"
    values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
    assert 0 < values[C.HP_VAL_LOSS] < 10
    # the eval's loss, as `mosaics-lab eval` wrote it to the run's eval/val.json
    record = json.loads((logdir / "trial-0000" / "eval" / "val.json").read_text())
    assert values["hp/val/loss"] == pytest.approx(record["metrics"]["loss"])
    assert "hp/mqar/accuracy" not in values  # a column, empty for a run never evaluated on mqar


def test_scalars_have_the_curves_of_each_step_and_no_epoch_chart(tensorboard):
    run = f"trial-0000/{RUN_NAME}"
    tags = tensorboard.get("/data/plugin/scalars/tags")[run]
    assert C.TRAIN_LOSS in tags and "memory/0/stm/beta0/h0" in tags
    assert "epoch" not in tags
    points = tensorboard.get("/data/plugin/scalars/scalars", tag=C.TRAIN_LOSS, run=run)
    assert [step for _, step, _ in points] == [0, 1]
    assert all(0 < loss < 10 for _, _, loss in points)


def test_custom_scalars_chart_one_layers_heads_together(tensorboard):
    layout = tensorboard.get("/data/plugin/custom_scalars/layout")
    (category,) = layout["category"]
    charts = {c["title"]: c["multiline"]["tag"] for c in category["chart"]}
    assert charts["layer 0 stm beta0 per head"] == [r"^memory/0/stm/beta0/h\d+$"]
    assert charts["stm beta per layer (mean over heads)"] == [r"^memory/\d+/stm/beta$"]


def test_memory_layout_groups_per_head_tags_by_layer_memory_and_quantity():
    tags = [
        "train/loss",
        "memory/0/stm/beta",
        "memory/1/stm/beta",
        "memory/0/ltm/alpha/h0",
        "memory/0/ltm/alpha/h1",
    ]
    charts = memory_layout(tags)["memory"]
    assert charts == {
        "layer 0 ltm alpha per head": ["Multiline", [r"^memory/0/ltm/alpha/h\d+$"]],
        "stm beta per layer (mean over heads)": ["Multiline", [r"^memory/\d+/stm/beta$"]],
    }
    assert memory_layout(["train/loss"]) == {}


def test_the_default_run_name_is_the_recipe_and_the_overrides_that_differ_shortened():
    from mosaics_lab.config import recipe_to_dict
    from mosaics_lab.training.run import run_id_for

    path = REPO / "recipes" / "mosaic_v2_tiny.yaml"
    same_seed = f"seed={load_recipe(path).seed}"  # named on the command line, but no different
    overrides = ["train.lr=0.003688821332197714", same_seed, "train.weight_decay=0.19", "log.every_n_steps=5"]
    recipe = load_recipe(path, overrides)
    assert recipe.log.compare_keys == ["train.lr", "train.weight_decay"]
    assert recipe.log.run_name == "mosaic_v2_tiny lr=0.00369 wd=0.19"
    assert load_recipe(path).log.run_name == "mosaic_v2_tiny"
    renamed = load_recipe(path, [*overrides, "log.run_name=baseline"])
    assert renamed.log.run_name == "baseline" and renamed.log.tensorboard_subdir == "baseline"
    assert run_id_for(recipe_to_dict(renamed)) == run_id_for(recipe_to_dict(recipe))  # same run


def test_a_run_resumed_under_another_run_name_keeps_its_run_dir_and_its_curves(stories_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = REPO / "recipes" / "gpt2_tiny.yaml"
    overrides = [o for o in tiny_overrides(stories_dir, tmp_path) if not o.startswith("log.run_dir=")]
    overrides += [f"log.root={tmp_path / 'runs'}", "log.checkpoint_every_n_steps=2"]
    first = train(load_recipe(path, overrides))
    first_name = load_recipe(path, overrides).log.tensorboard_subdir
    assert (first / first_name).is_dir()

    resumed = train(load_recipe(path, [*overrides, "train.max_steps=4", "log.run_name=longer"]))
    assert resumed == first
    assert not (first / first_name).exists()
    acc = EventAccumulator(str(first / "longer"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars(C.TRAIN_LOSS)]
    logged = [row["step"] for _, row in read_jsonl_rows(first / C.METRICS_FILE) if C.TRAIN_LOSS in row]
    # the first process's points and the resumed one's, in one TensorBoard run, as in metrics.jsonl
    assert steps[:2] == [0, 1] and len(steps) == 4 and steps == logged
