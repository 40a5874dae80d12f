"""An eval's headline metrics as HPARAMS columns: which ``hp/<task>/<metric>`` values a result gives
(``runner.hparams_metrics``), and that the column list every run declares covers every task."""

from __future__ import annotations

import pytest

from mosaics_lab import constants as C
from mosaics_lab.evaluation import EVAL_TASKS
from mosaics_lab.evaluation.common import EvalResult
from mosaics_lab.evaluation.runner import hparams_metrics


def test_every_eval_task_has_an_hparams_column_and_every_column_names_a_task():
    tasks = {tag.split("/")[1] for tag in C.HP_EVAL_METRICS}
    assert tasks == set(EVAL_TASKS)
    assert all(tag.startswith("hp/") and tag.count("/") == 2 for tag in C.HP_EVAL_METRICS)
    assert len(set(C.HP_EVAL_METRICS)) == len(C.HP_EVAL_METRICS)
    assert not {C.HP_VAL_LOSS, C.HP_TRAIN_LOSS} & set(C.HP_EVAL_METRICS)


def test_an_unswept_task_gives_its_headline_metrics_that_are_columns():
    result = EvalResult(metrics={"accuracy": 0.75, "tvd": 0.1, "not_a_column": 3.0})
    assert hparams_metrics("regbench", result) == {"hp/regbench/accuracy": 0.75, "hp/regbench/tvd": 0.1}
    assert hparams_metrics("mqar", EvalResult(metrics={"accuracy": None})) == {}


def test_a_length_sweep_gives_its_metric_at_each_multiple_of_the_training_length():
    def point(length, label, factor, loss, status="ok"):
        metrics = {"loss": loss}
        return {"length": length, "label": label, "factor": factor, "status": status, "metrics": metrics}

    result = EvalResult(
        metrics={"loss_at_longest": 2.5},
        axis="length",
        points=[
            point(32, "1x", 1, 2.0),
            point(128, "4x", 4, 2.5),
            point(100, "100", None, 2.2),  # a length in tokens: no column
            point(256, "8x", 8, None, status="n/a"),  # the model cannot run there
        ],
    )
    assert hparams_metrics("extrapolation", result) == {
        "hp/extrapolation/loss@1x": 2.0,
        "hp/extrapolation/loss@4x": 2.5,
    }


def test_a_shots_sweep_gives_its_accuracy_at_one_and_sixteen_shots():
    points = [
        {"shots": k, "status": "ok", "metrics": {"accuracy": a}} for k, a in ((1, 0.3), (4, 0.5), (16, 0.9))
    ]
    result = EvalResult(metrics={"accuracy_at_1_shots": 0.3}, axis="shots", points=points)
    assert hparams_metrics("manyshot", result) == {
        "hp/manyshot/accuracy@1-shot": 0.3,
        "hp/manyshot/accuracy@16-shot": 0.9,
    }


@pytest.mark.parametrize("task", ["multidoc_qa", "induction"])
def test_the_task_length_sweeps_fill_their_1x_and_8x_columns(task):
    metric = "exact_match" if task == "multidoc_qa" else "accuracy"
    points = [
        {"length": 64 * f, "factor": f, "status": "ok", "metrics": {metric: 1 / f, "token_accuracy": 0.5}}
        for f in (1, 2, 8)
    ]
    result = EvalResult(axis="length", points=points)
    assert hparams_metrics(task, result) == {f"hp/{task}/{metric}@1x": 1.0, f"hp/{task}/{metric}@8x": 0.125}
