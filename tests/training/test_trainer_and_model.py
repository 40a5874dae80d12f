"""The trainer and the model: document ids from the <|eot|> of each block (data.document_mask), the
LTM delay fixed per optimiser step, model diagnostics once per logging step, a clear error for data
without <|eot|>, and evaluation with the mask the run trained with."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from mosaics_lab import constants as C
from mosaics_lab.cli import EXIT_USER_ERROR, main
from mosaics_lab.config import load_recipe
from mosaics_lab.models.mosaic_v2 import MosaicV2
from mosaics_lab.ops import document_ids
from mosaics_lab.training.run import train
from tests.conftest import REPO, tiny_overrides

BYTE_EOT = 256


@pytest.fixture
def recorded(monkeypatch):
    """What every MosaicV2 forward receives, and the step of every begin_step call."""
    calls: dict[str, list] = {"forward": [], "steps": []}
    forward, begin_step = MosaicV2.forward, MosaicV2.begin_step

    def spy_forward(self, idx, doc_ids=None):
        calls["forward"].append((self.training, idx.clone(), None if doc_ids is None else doc_ids.clone()))
        calls["forward"][-1] += (self.ltm_delay(),)
        return forward(self, idx, doc_ids)

    def spy_begin_step(self, step, seed=0):
        calls["steps"].append(step)
        return begin_step(self, step, seed)

    monkeypatch.setattr(MosaicV2, "forward", spy_forward)
    monkeypatch.setattr(MosaicV2, "begin_step", spy_begin_step)
    return calls


def test_trainer_passes_document_ids_cut_at_eot_and_one_delay_per_step(recorded, stories_dir, tmp_path):
    # 4 sequences per step in micro-batches of 2: two forwards per optimiser step share its delay.
    overrides = tiny_overrides(stories_dir, tmp_path / "run", steps=3) + ["model.block_size=64"]
    recipe = load_recipe(REPO / "recipes" / "mosaic_v2_tiny.yaml", overrides)
    assert recipe.data.document_mask
    train(recipe)
    training = [call for call in recorded["forward"] if call[0]]
    assert len(training) == 6 and recorded["steps"] == [0, 0, 1, 1, 2, 2]
    for _, idx, doc_ids, _ in recorded["forward"]:
        assert doc_ids is not None and torch.equal(doc_ids, document_ids(idx, BYTE_EOT))
    assert any((idx == BYTE_EOT).any() for _, idx, _, _ in training)  # the stories do hold boundaries
    delays = [call[3] for call in training]
    assert delays[0] == delays[1] and delays[2] == delays[3] and delays[4] == delays[5]


def test_without_document_mask_the_model_sees_one_document_per_row(recorded, stories_dir, tmp_path):
    overrides = tiny_overrides(stories_dir, tmp_path / "run") + ["data.document_mask=false"]
    train(load_recipe(REPO / "recipes" / "mosaic_v2_tiny.yaml", overrides))
    assert recorded["forward"] and all(doc_ids is None for _, _, doc_ids, _ in recorded["forward"])


def test_document_mask_on_data_without_eot_is_a_clear_error(tmp_path, capsys):
    from mosaics_lab.data import prepare_synthetic

    # Task examples carry no <|eot|> (each example is one sequence).
    data = prepare_synthetic(
        "induction", tmp_path / "induction", seed=0, vocab_size=16, seq_len=32, num_train=40, num_val=8
    )
    overrides = tiny_overrides(data, tmp_path / "run") + ["data.document_mask=true"]
    code = main(["train", str(REPO / "recipes" / "mosaic_v2_tiny.yaml"), *overrides])
    assert code == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "data.document_mask" in err and "<|eot|>" in err, err


class CrashAt(L.Callback):
    """Crashes the run after `step` optimiser steps, as a killed process would stop it."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("crash for the test")


def test_mosaic_v2_with_a_random_delay_resumes_with_identical_losses(stories_dir, tmp_path):
    # The delay is a function of (seed, step), so a resumed run draws the m it would have drawn.
    def losses(run_dir) -> dict[int, float]:
        rows = [json.loads(line) for line in (run_dir / C.METRICS_FILE).read_text().splitlines() if line]
        return {r["step"]: r[C.TRAIN_LOSS] for r in rows if C.TRAIN_LOSS in r}

    base = REPO / "recipes" / "mosaic_v2_tiny.yaml"
    extra = ["log.checkpoint_every_n_steps=3", "model.block_size=64"]
    straight = losses(train(load_recipe(base, tiny_overrides(stories_dir, tmp_path / "a", steps=8) + extra)))
    recipe = load_recipe(base, tiny_overrides(stories_dir, tmp_path / "b", steps=8) + extra)
    with pytest.raises(RuntimeError, match="crash for the test"):
        train(recipe, callbacks=[CrashAt(5)])
    resumed = losses(train(recipe))
    assert sorted(resumed) == sorted(straight) == list(range(8))
    for step in range(3, 8):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-6, abs=1e-6), step


def test_eval_of_a_document_masked_run_uses_the_mask_it_trained_with(recorded, stories_dir, tmp_path):
    from mosaics_lab.evaluation.runner import EvalOptions, evaluate

    run = train(
        load_recipe(REPO / "recipes" / "mosaic_v2_tiny.yaml", tiny_overrides(stories_dir, tmp_path / "r"))
    )
    recorded["forward"].clear()
    evaluate(run, "val", EvalOptions(batches=2, batch_size=2))
    assert recorded["forward"]
    for training, idx, doc_ids, _ in recorded["forward"]:
        assert not training and doc_ids is not None and torch.equal(doc_ids, document_ids(idx, BYTE_EOT))


def test_model_diagnostics_run_once_per_logging_step_not_per_micro_batch(stories_dir, tmp_path, monkeypatch):
    # diagnostics() is a host sync (a collective under FSDP): 4 steps x 2 micro-batches, logged every 2
    # steps, call it twice (steps 2 and 4), and the bandwidths still reach the logs.
    calls = []
    diagnostics = MosaicV2.diagnostics
    monkeypatch.setattr(MosaicV2, "diagnostics", lambda self: calls.append(1) or diagnostics(self))
    overrides = tiny_overrides(stories_dir, tmp_path / "run", steps=4) + ["log.every_n_steps=2"]
    run = train(load_recipe(REPO / "recipes" / "mosaic_v2_tiny.yaml", overrides))
    assert len(calls) == 2
    rows = [json.loads(line) for line in (run / C.METRICS_FILE).read_text().splitlines() if line]
    assert sum(any(k.startswith("memory/0/stm/beta") for k in r) for r in rows) == 2


def test_extending_a_finished_run_logs_the_next_steps_without_a_gap(stories_dir, tmp_path):
    # Raising train.max_steps continues a finished run; its new steps follow on (was 0, 1, 3, 4).
    run_dir = tmp_path / "run"
    for steps in (2, 4):
        train(
            load_recipe(
                REPO / "recipes" / "gpt2_tiny.yaml", tiny_overrides(stories_dir, run_dir, steps=steps)
            )
        )
    rows = [json.loads(line) for line in (run_dir / C.METRICS_FILE).read_text().splitlines() if line]
    assert [r["step"] for r in rows if C.TRAIN_LOSS in r] == [0, 1, 2, 3]
