"""Metric correctness on hand-built logits, and on generated examples with oracle predictors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy

from mosaics_lab.data.tasks import IGNORE_INDEX, get_task
from mosaics_lab.evaluation.metrics import (
    ExactMatch,
    MaskedAccuracy,
    RegBenchScore,
    exact_match,
    masked_accuracy,
    regbench_metrics,
    regbench_targets,
    symbol_support_mask,
)

NEG = -1e9  # an effectively zero probability that stays finite


def one_hot_logits(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    """(B, T) -> (B, T, V) logits whose argmax is ``tokens`` (negative tokens map to class 0)."""
    return torch.nn.functional.one_hot(tokens.clamp(min=0), vocab).float() * 10.0


# --- masked accuracy and exact match ---------------------------------------------------------------


def test_masked_accuracy_of_perfect_wrong_and_mixed_predictors():
    labels = torch.tensor([[3, IGNORE_INDEX, 1, 0], [IGNORE_INDEX, 2, 2, IGNORE_INDEX]])
    correct, count = masked_accuracy(one_hot_logits(labels, 5), labels)
    assert (correct.item(), count.item()) == (5, 5)
    wrong = torch.where(labels >= 0, (labels + 1) % 5, labels)
    assert masked_accuracy(one_hot_logits(wrong, 5), labels)[0].item() == 0
    mixed = labels.clone()
    mixed[0, 0] = 4  # one of the five targets predicted wrong
    assert masked_accuracy(one_hot_logits(mixed, 5), labels)[0].item() == 4


def test_masked_accuracy_agrees_with_torchmetrics_multiclass_accuracy():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 9, 7, generator=generator)
    labels = torch.randint(0, 7, (4, 9), generator=generator)
    labels[torch.rand(4, 9, generator=generator) < 0.4] = IGNORE_INDEX
    correct, count = masked_accuracy(logits, labels)
    reference = MulticlassAccuracy(num_classes=7, average="micro", ignore_index=IGNORE_INDEX)
    expected = reference(logits.reshape(-1, 7), labels.reshape(-1))
    assert math.isclose(correct.item() / count.item(), expected.item(), rel_tol=1e-6)


def test_exact_match_needs_every_labelled_position():
    labels = torch.tensor(
        [
            [IGNORE_INDEX, 1, 2, IGNORE_INDEX],  # all right
            [IGNORE_INDEX, 1, 2, IGNORE_INDEX],  # one of two wrong
            [IGNORE_INDEX] * 4,  # nothing to match: left out
        ]
    )
    predicted = torch.tensor([[0, 1, 2, 0], [0, 1, 3, 0], [0, 0, 0, 0]])
    exact, count = exact_match(one_hot_logits(predicted, 4), labels)
    assert (exact.item(), count.item()) == (1, 2)


def test_accumulators_equal_the_metric_over_the_concatenated_batches():
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(3):
        labels = torch.randint(0, 5, (3, 6), generator=generator)
        labels[torch.rand(3, 6, generator=generator) < 0.5] = IGNORE_INDEX
        batches.append((torch.randn(3, 6, 5, generator=generator), labels))
    accuracy, em = MaskedAccuracy(), ExactMatch()
    for logits, labels in batches:
        accuracy.update(logits, labels)
        em.update(logits, labels)
    all_logits = torch.cat([b[0] for b in batches])
    all_labels = torch.cat([b[1] for b in batches])
    correct, count = masked_accuracy(all_logits, all_labels)
    exact, examples = exact_match(all_logits, all_labels)
    assert math.isclose(accuracy.compute().item(), correct.item() / count.item(), rel_tol=1e-6)
    assert math.isclose(em.compute().item(), exact.item() / examples.item(), rel_tol=1e-6)


def test_shape_mismatch_is_a_value_error():
    with pytest.raises(ValueError, match="logits"):
        masked_accuracy(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))


# --- RegBench: accuracy and total variation distance ---------------------------------------------------


def _legal(rows: list[list[int]], vocab: int) -> torch.Tensor:
    """(1, T, V) legal mask from a list of legal-symbol lists."""
    mask = torch.zeros(1, len(rows), vocab, dtype=torch.bool)
    for t, symbols in enumerate(rows):
        mask[0, t, symbols] = True
    return mask


def test_regbench_perfect_predictor_scores_accuracy_one_and_tvd_zero():
    legal = _legal([[0, 1], [2], [0, 1, 3]], vocab=4)
    logits = torch.where(legal, 0.0, NEG)  # uniform over the legal symbols: the true distribution
    out = regbench_metrics(logits, legal, torch.ones(1, 3, dtype=torch.bool))
    assert out["accuracy"].item() == 1.0 and out["tvd"].item() < 1e-6 and out["count"].item() == 3


def test_regbench_uniform_predictor_scores_the_hand_computed_tvd():
    # Over 4 symbols q = 1/4 each. Legal {0, 1}: p = (1/2, 1/2, 0, 0), TVD = 0.5 * 4 * 1/4 = 1/2.
    # Legal {2}: p = (0, 0, 1, 0), TVD = 0.5 * (1/4 + 1/4 + 3/4 + 1/4) = 3/4. Mean = 5/8.
    legal = _legal([[0, 1], [2]], vocab=4)
    out = regbench_metrics(torch.zeros(1, 2, 4), legal, torch.ones(1, 2, dtype=torch.bool))
    assert math.isclose(out["tvd"].item(), 5 / 8, rel_tol=1e-6)


def test_regbench_wrong_predictor_scores_accuracy_zero_and_score_mask_selects_positions():
    legal = _legal([[0, 1], [2], [3]], vocab=4)
    logits = torch.where(legal, NEG, 0.0)  # all mass on illegal symbols
    out = regbench_metrics(logits, legal, torch.ones(1, 3, dtype=torch.bool))
    assert out["accuracy"].item() == 0.0 and math.isclose(out["tvd"].item(), 1.0, rel_tol=1e-6)
    partial = torch.where(legal, 0.0, NEG)
    partial[0, 2] = torch.tensor([0.0, 0.0, 0.0, NEG])  # wrong at position 2 only
    assert regbench_metrics(partial, legal, torch.tensor([[True, True, False]]))["accuracy"].item() == 1.0
    everywhere = regbench_metrics(partial, legal, torch.ones(1, 3, dtype=torch.bool))
    assert math.isclose(everywhere["accuracy"].item(), 2 / 3, rel_tol=1e-6)


def test_regbench_support_mask_ignores_mass_outside_the_symbols():
    # Symbols 0..2, then a separator (3) and padding (4). Mass on the separator is renormalised away.
    legal = _legal([[0, 1]], vocab=5)
    logits = torch.tensor([[[0.0, 0.0, NEG, 5.0, 5.0]]])
    support = symbol_support_mask(3, 5)
    out = regbench_metrics(logits, legal, torch.ones(1, 1, dtype=torch.bool), support)
    assert out["accuracy"].item() == 1.0 and out["tvd"].item() < 1e-6
    unrestricted = regbench_metrics(logits, legal, torch.ones(1, 1, dtype=torch.bool))
    assert unrestricted["accuracy"].item() == 0.0 and unrestricted["tvd"].item() > 0.9


def test_regbench_scored_position_without_legal_symbol_is_an_error():
    with pytest.raises(ValueError, match="no legal symbol"):
        regbench_metrics(torch.zeros(1, 1, 3), _legal([[]], 3), torch.ones(1, 1, dtype=torch.bool))


def test_regbench_oracle_on_generated_examples_and_the_accumulator():
    task = get_task("regbench", num_train_languages=20, seq_len=256)
    model_vocab = 32  # a model vocabulary larger than the task's
    examples = list(task.examples("test", 6, seed=0))
    targets = regbench_targets(examples, model_vocab)
    assert targets.legal_next_mask.shape == (6, 256, model_vocab)
    labels = torch.from_numpy(np.stack([ex.labels for ex in examples]))
    # every scored label is a legal symbol, and every scored position has a label
    scored_labels = labels[targets.score_mask]
    assert torch.all(scored_labels >= 0)
    assert torch.all(targets.legal_next_mask[targets.score_mask].gather(1, scored_labels[:, None]))

    oracle = torch.where(targets.legal_next_mask, 0.0, NEG)  # the automaton's own distribution
    out = regbench_metrics(oracle, *targets)
    assert out["accuracy"].item() == 1.0 and out["tvd"].item() < 1e-5
    # a predictor that copies the label (one legal symbol of each set) is accurate but not calibrated
    copier = one_hot_logits(labels, model_vocab) * 10
    copied = regbench_metrics(copier, *targets)
    assert copied["accuracy"].item() == 1.0 and copied["tvd"].item() > 0.1

    score = RegBenchScore()
    score.update(oracle[:3], *[m[:3] for m in targets[:2]], targets.support_mask)
    score.update(copier[3:], *[m[3:] for m in targets[:2]], targets.support_mask)
    first = regbench_metrics(
        oracle[:3], targets.legal_next_mask[:3], targets.score_mask[:3], targets.support_mask
    )
    second = regbench_metrics(
        copier[3:], targets.legal_next_mask[3:], targets.score_mask[3:], targets.support_mask
    )
    weighted = (first["tvd"] * first["count"] + second["tvd"] * second["count"]) / (
        first["count"] + second["count"]
    )
    assert math.isclose(score.compute()["tvd"].item(), weighted.item(), rel_tol=1e-5)


# --- the other tasks' metrics on generated batches ----------------------------------------------------


@pytest.mark.parametrize("name", ["mqar", "manyshot", "multidoc_qa", "induction"])
def test_label_oracle_is_perfect_and_a_shifted_predictor_scores_zero(name):
    task = get_task(name)
    batch = task.batch("test", 4, seed=0)
    labels = torch.from_numpy(batch["labels"])
    oracle = one_hot_logits(labels, task.vocab_size)
    shifted = one_hot_logits(
        torch.where(labels >= 0, (labels + 1) % task.vocab_size, labels), task.vocab_size
    )
    correct, count = masked_accuracy(oracle, labels)
    assert correct.item() == count.item() > 0
    assert masked_accuracy(shifted, labels)[0].item() == 0
    assert exact_match(oracle, labels)[0].item() == 4 and exact_match(shifted, labels)[0].item() == 0
