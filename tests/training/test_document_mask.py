"""data.document_mask through the trainer: document ids from the <|eot|> of each block, the LTM delay
fixed per optimiser step, and a clear error for data without <|eot|>."""

from __future__ import annotations

import pytest
import torch

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
