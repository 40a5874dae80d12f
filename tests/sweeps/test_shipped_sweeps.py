"""Every sweep file in sweeps/ is valid against its recipe, and runs on a CPU (slow: a few trials each)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from optuna.trial import TrialState

from mosaics_lab.config import load_recipe
from mosaics_lab.sweeps.report import SUMMARY_MD
from mosaics_lab.sweeps.spec import resolve_sweep

from .conftest import REPO, load_trials, run_sweep, tiny_cli_overrides

SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))
REQUIRED = {"v2_bandwidth", "v2_memory_windows", "v2_components", "v1_vs_transformer", "lr_search"}


def test_the_promised_sweeps_are_shipped():
    assert {p.stem for p in SWEEPS} >= REQUIRED


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_shipped_sweep_is_valid_against_its_recipe(path: Path, monkeypatch):
    monkeypatch.chdir(REPO)
    sweep = resolve_sweep(path.relative_to(REPO))  # checks every key and value it varies
    assert sweep.study == path.stem, "the study (and output folder) is named after the file"
    if sweep.is_grid:
        assert len(sweep.cells) >= 2
        assert len({tuple(sorted(map(str, c.values.items()))) for c in sweep.cells}) == len(sweep.cells)
    # `--size smoke` checks a sweep end to end in minutes: a few steps per trial
    assert resolve_sweep(path.relative_to(REPO), size="smoke").total_steps <= 10


def test_v1_vs_transformer_compares_matched_parameter_counts(monkeypatch):
    from mosaics_lab.training.matching import count_params

    monkeypatch.chdir(REPO)
    sweep = resolve_sweep("sweeps/v1_vs_transformer.yaml")
    counts: dict[tuple[str, int], int] = {}
    for cell in sweep.cells:
        model = load_recipe(sweep.base_recipe, sweep.trial_overrides(cell.values)).model
        counts[(model.arch, model.n_layer)] = count_params(dataclasses.replace(model, vocab_size=256))
    depths = sorted({d for _, d in counts})
    assert depths == [1, 2, 4, 8]
    for d in depths:
        gpt2, mosaic = counts[("gpt2", d)], counts[("mosaic_v1", d)]
        assert abs(gpt2 - mosaic) / mosaic < 0.02, (d, gpt2, mosaic)


@pytest.mark.slow
@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_shipped_sweep_runs_on_cpu(path: Path, tmp_path, sweep_stories):
    overrides = tiny_cli_overrides(sweep_stories, steps=4)
    out = tmp_path / "runs"
    assert run_sweep(path, out, "--n-trials", "2", "--jobs", "2", *overrides, fake=False) == 0
    trials = load_trials(out, path.stem)
    assert len(trials) >= 2 and sum(t.state == TrialState.COMPLETE for t in trials) == 2, [
        (t.number, t.state, t.user_attrs.get("error")) for t in trials
    ]
    assert (out / path.stem / SUMMARY_MD).is_file()
