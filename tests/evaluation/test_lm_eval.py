"""Language-modelling evaluators on fake models with known losses: per-position curve and in-context
gain, validation loss and perplexity, and extrapolation beyond a model's supported length."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mosaics_lab.evaluation.common import EvalError, parse_lengths
from mosaics_lab.evaluation.lm import (
    PerPositionLoss,
    evaluate_extrapolation,
    evaluate_per_position,
    evaluate_val,
    in_context_gain,
    token_losses,
)
from mosaics_lab.models import build_model
from mosaics_lab.models.gpt2 import GPT2Config
from tests.evaluation.fakes import ChosenLoss

TOL = 1e-4


def falling(t: int) -> float:
    """3 nats for the first 64 positions, then 1: a model that learns from its context."""
    return 3.0 if t < 64 else 1.0


def zero_windows(length: int, sizes=(3, 5, 2)) -> list[dict]:
    """Token-0 windows (labels 0 everywhere), in batches of uneven sizes."""
    return [
        {
            "input_ids": torch.zeros(b, length, dtype=torch.long),
            "labels": torch.zeros(b, length, dtype=torch.long),
        }
        for b in sizes
    ]


def test_per_position_loss_recovers_the_chosen_curve_and_its_gain():
    result = evaluate_per_position(ChosenLoss(falling), zero_windows(256), 256, max_batches=10)
    curve = np.array(result.curves["loss"])
    np.testing.assert_allclose(curve, [falling(t) for t in range(256)], atol=TOL)
    # positions 32..63 at 3 nats, last quarter (192..255) at 1 nat
    assert result.metrics["in_context_gain"] == pytest.approx(2.0, abs=TOL)
    assert result.metrics["loss_reference"] == pytest.approx(3.0, abs=TOL)
    assert result.metrics["loss_last_quarter"] == pytest.approx(1.0, abs=TOL)
    assert result.info["num_windows"] == 10 and result.info["gain_reference_positions"] == [32, 64]
    assert "positions 32-63 minus" in result.info["definitions"]["in_context_gain"]
    assert [p["metrics"]["loss"] for p in result.points] == pytest.approx(list(curve))


def test_per_position_loss_uses_at_most_max_batches():
    result = evaluate_per_position(ChosenLoss(falling), zero_windows(128), 128, max_batches=2)
    assert result.info["num_windows"] == 8


def test_unlabelled_positions_carry_no_loss_and_come_out_as_none():
    batch = zero_windows(64, sizes=(4,))[0]
    batch["labels"][:, ::2] = -100
    result = evaluate_per_position(ChosenLoss(lambda t: 0.5 + t / 100), [batch], 64, max_batches=1)
    curve = result.curves["loss"]
    assert all(v is None for v in curve[::2])
    assert curve[1::2] == pytest.approx([0.5 + t / 100 for t in range(1, 64, 2)], abs=TOL)


def test_per_position_accumulator_equals_one_pass_over_the_concatenated_batches():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 10, 7, generator=gen)
    labels = torch.randint(0, 7, (6, 10), generator=gen)
    labels[0, 3] = -100
    metric = PerPositionLoss(10)
    metric.update(logits[:2], labels[:2])
    metric.update(logits[2:], labels[2:])
    losses = token_losses(logits, labels)
    mask = labels != -100
    expected = (losses * mask).sum(0) / mask.sum(0)
    torch.testing.assert_close(metric.compute().float(), expected)


def test_in_context_gain_measures_the_late_context_not_the_first_positions():
    # T = 256: a steep start (positions 0..31, what the old definition measured), then 2 nats at
    # 32..63, 1.5 in between and 1 over the last quarter (192..255)
    curve = np.concatenate([np.full(32, 6.0), np.full(32, 2.0), np.full(128, 1.5), np.full(64, 1.0)])
    gain = in_context_gain(curve)
    assert gain["in_context_gain"] == pytest.approx(1.0)  # 2 - 1; the first 32 positions play no part
    assert gain["loss_reference"] == pytest.approx(2.0) and gain["loss_last_quarter"] == pytest.approx(1.0)
    assert gain["reference_positions"] == (32, 64)


def test_the_slope_per_doubling_of_context_is_fitted_over_positions_from_32_on():
    t = np.arange(512)
    # loss falls by 0.25 nats per doubling of the tokens read (t + 1) from position 32 on; before it,
    # a curve of its own that a fit over every position would bend
    curve = np.where(t >= 32, 5.0 - 0.25 * np.log2(t + 1), 9.0)
    gain = in_context_gain(curve)
    assert gain["loss_slope_per_doubling"] == pytest.approx(-0.25, abs=1e-9)
    # the gain of that curve: 0.25 * (mean log2(t + 1) over the last quarter - over 32..63)
    expected = 0.25 * (np.log2(t[384:] + 1).mean() - np.log2(t[32:64] + 1).mean())
    assert gain["in_context_gain"] == pytest.approx(expected)
    # unlabelled positions (NaN) are left out of the fit and the means
    sparse = curve.copy()
    sparse[::3] = np.nan
    assert in_context_gain(sparse)["loss_slope_per_doubling"] == pytest.approx(-0.25, abs=1e-9)
    flat = in_context_gain(np.full(256, 2.0))
    assert flat["loss_slope_per_doubling"] == pytest.approx(0.0) and flat["in_context_gain"] == 0.0


def test_windows_shorter_than_128_compare_their_second_and_last_quarters():
    curve = np.concatenate([np.full(16, 5.0), np.full(16, 3.0), np.full(16, 2.5), np.full(16, 2.0)])
    gain = in_context_gain(curve)  # T = 64: reference 16..31, last quarter 48..63
    assert gain["reference_positions"] == (16, 32)
    assert gain["in_context_gain"] == pytest.approx(1.0)
    assert in_context_gain(np.full(16, np.nan))["in_context_gain"] is None
    one = in_context_gain(np.array([2.0]))  # nothing to compare in a single position
    assert one["in_context_gain"] is None and one["loss_slope_per_doubling"] is None


def test_val_loss_is_the_token_weighted_mean_and_ppl_its_exponential():
    batches = zero_windows(32, sizes=(2, 3))
    batches[1]["labels"][:, 16:] = -100  # the second batch only has its first half labelled
    model = ChosenLoss(lambda t: 1.0 + t / 32)
    result = evaluate_val(model, batches, max_batches=5)
    per_token = np.array([1.0 + t / 32 for t in range(32)])
    expected = (2 * per_token.sum() + 3 * per_token[:16].sum()) / (2 * 32 + 3 * 16)
    assert result.metrics["loss"] == pytest.approx(expected, abs=TOL)
    assert result.metrics["ppl"] == pytest.approx(math.exp(expected), rel=TOL)
    assert result.info["num_windows"] == 5


def test_val_without_any_labelled_token_is_a_clear_error():
    batch = zero_windows(8, sizes=(2,))[0]
    batch["labels"][:] = -100
    with pytest.raises(EvalError, match="no validation batch"):
        evaluate_val(ChosenLoss(falling), [batch], max_batches=1)


def test_extrapolation_reports_na_where_the_model_refuses_the_length():
    model = ChosenLoss(falling, max_len=128)
    result = evaluate_extrapolation(model, zero_windows, 128, parse_lengths("1x,2x,4x"), max_batches=1)
    status = {p["length"]: p["status"] for p in result.points}
    assert status == {128: "ok", 256: "n/a", 512: "n/a"}
    na = result.points[1]
    assert "learned positions for 128" in na["reason"]
    assert all(v is None for v in na["metrics"].values())
    assert list(result.curves) == ["128"]
    assert result.info["longest_length"] == 128


def test_extrapolation_of_gpt2_beyond_its_learned_positions_is_na_not_a_crash():
    gpt2 = build_model(GPT2Config(vocab_size=8, block_size=16, n_layer=1, n_head=1, n_embd=8)).eval()
    result = evaluate_extrapolation(
        gpt2, lambda n: zero_windows(n, (2,)), 16, parse_lengths("1x,2x,64"), max_batches=1
    )
    assert [p["status"] for p in result.points] == ["ok", "n/a", "n/a"]
    assert "learned positions" in result.points[1]["reason"]
    assert result.points[0]["metrics"]["loss"] is not None


def test_extrapolation_measures_the_loss_beyond_the_training_length():
    model = ChosenLoss(lambda t: 2.0 if t < 64 else 0.5)
    result = evaluate_extrapolation(model, zero_windows, 64, parse_lengths("1x,2x"), max_batches=1)
    one, two = (p["metrics"] for p in result.points)
    assert one["loss_beyond_train"] is None
    assert one["loss"] == pytest.approx(2.0, abs=TOL)
    assert two["loss_beyond_train"] == pytest.approx(0.5, abs=TOL)
    assert two["loss"] == pytest.approx(1.25, abs=TOL)
    # T = 128: positions 32..63 at 2 nats, the last quarter (96..127) at 0.5
    assert two["in_context_gain"] == pytest.approx(1.5, abs=TOL)
    assert two["loss_slope_per_doubling"] < 0
