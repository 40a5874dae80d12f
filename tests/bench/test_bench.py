"""`mosaics-lab bench`: the quick smoke run end to end, the pre-timing check, parameter matching."""

from __future__ import annotations

import json

import pytest
import torch

from mosaics_lab.bench import cli as bench_cli
from mosaics_lab.bench.train import PAIRS, Shape, matched_baseline, model_config
from mosaics_lab.cli import main
from mosaics_lab.training.matching import TOLERANCE, count_params


def test_quick_bench_prints_tables_and_writes_json_for_every_op_and_pair(tmp_path, capsys):
    assert main(["bench", "all", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| mosaic_v1 | gpt2 |" in out and "| mosaic_v2 | llama |" in out and "stm_only" in out

    ops = json.loads((tmp_path / "ops.json").read_text())
    assert ops["meta"]["machine"]["torch"] == torch.__version__ and ops["meta"]["load_before"]
    assert {c["op"] for c in ops["checks"]} == {
        "leaky_average",
        "kernel_regression_causal",
        "kernel_regression_window255",
    }
    assert {(r["op"], r["impl"]) for r in ops["rows"]} >= {
        ("leaky_average", "fast"),
        ("leaky_average", "reference"),
        ("kernel_regression_causal", "sdpa"),
        ("kernel_regression_window255", "fast"),
    }

    rows = json.loads((tmp_path / "train.json").read_text())["rows"]
    for mosaic, baseline in PAIRS:
        pair = [r for r in rows if r["arch"] in (mosaic, baseline) and r["vs"] in (mosaic, baseline)]
        assert len(pair) == 4  # two shapes x two models
        for T in {r["T"] for r in pair}:
            m, b = (next(r for r in pair if r["arch"] == a and r["T"] == T) for a in (mosaic, baseline))
            assert abs(m["params"] - b["params"]) / m["params"] < TOLERANCE
            assert m["B"] * m["T"] == b["B"] * b["T"]  # same tokens per step
            assert m["ratio_vs_baseline"] == pytest.approx(b["ms_per_step"] / m["ms_per_step"], rel=0.5)
            assert m["tokens_per_sec"] > 0 and m["peak_mib"] > 0 and m["mem_method"] == "saved-tensors"

    scaling = json.loads((tmp_path / "stm_scaling.json").read_text())["rows"]
    assert [r["T"] for r in scaling] == [256, 1024]
    # stm_only keeps O(T h) state: 4x the length may not cost more than ~4x the memory (x5 margin
    # for the fixed model state); a T x T buffer would be 16x.
    assert scaling[1]["peak_mib"] < 5 * scaling[0]["peak_mib"]

    masks = json.loads((tmp_path / "document_mask.json").read_text())["rows"]
    assert {r["arch"] for r in masks} == {"gpt2", "llama", "mosaic_v1", "mosaic_v2"}
    assert all(r["ms_per_step_masked"] > 0 and r["peak_mib_masked"] > 0 for r in masks)
    assert "| mosaic_v2 | 128 | 2 | 50 |" in out


def test_a_fast_op_that_disagrees_with_its_reference_stops_the_bench_before_timing(monkeypatch):
    import mosaics_lab.ops as ops

    monkeypatch.setattr(ops, "leaky_average", lambda x, d, g: 1.001 * ops.leaky_average_reference(x, d, g))
    with pytest.raises(RuntimeError, match="leaky_average on cpu: fast path disagrees"):
        bench_cli.check_ops(torch.device("cpu"))


@pytest.mark.parametrize("mosaic, baseline", PAIRS)
def test_baselines_are_parameter_matched_to_their_mosaic(mosaic, baseline):
    shape = Shape(256, 4, 4, 2048, 2)
    target = count_params(model_config(mosaic, shape))
    matched = matched_baseline(model_config(baseline, shape), target)
    assert abs(count_params(matched) - target) / target < TOLERANCE
    assert matched.d_ff != model_config(baseline, shape).d_ff
