"""`mosaics-lab compare --by KEY`: runs of several sweeps grouped by a recipe key, mean and std over
seeds, grouped curves as PNG; hyperparameters with 3 significant digits in the table."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import yaml

from mosaics_lab.analysis.compare import compare
from mosaics_lab.analysis.runs import RunsError
from mosaics_lab.cli import main
from tests.analysis.test_compare import PNG, make_run


def seeded_run(path: Path, lr: float, seed: int, losses: list[float]) -> Path:
    make_run(path, lr, losses)
    recipe = yaml.safe_load((path / "recipe.yaml").read_text())
    recipe["seed"] = seed
    (path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture
def two_sweeps(tmp_path) -> tuple[Path, Path]:
    a, b = tmp_path / "runs" / "sweep_a", tmp_path / "runs" / "sweep_b"
    seeded_run(a / "trial-0000", 0.003688821332197714, 0, [3.0, 2.0, 1.0])
    seeded_run(a / "trial-0001", 0.003688821332197714, 1, [3.0, 2.4, 1.4])
    seeded_run(b / "trial-0000", 0.0123456789, 0, [3.0, 2.8, 2.6])
    seeded_run(b / "trial-0001", 0.0123456789, 1, [3.0, 2.9, 2.8])
    return a, b


def test_by_a_key_gives_mean_and_std_over_seeds_across_sweeps(two_sweeps, tmp_path):
    a, b = two_sweeps
    result = compare([str(a), str(b / "trial-*")], ["val/loss"], tmp_path / "out", by=["train.lr"])
    groups = {round(row["train.lr"], 6): row for row in result["groups"]}
    assert set(groups) == {0.003689, 0.012346}
    first = groups[0.003689]
    assert first["runs"] == 2 and first["seeds"] == "0,1"
    assert first["val/loss mean"] == pytest.approx(1.2)
    assert first["val/loss std"] == pytest.approx(statistics.stdev([1.0, 1.4]))
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "| 0.00369 | 2 | 0,1 | 1.2 |" in md  # the key's value with 3 significant digits
    png = tmp_path / "out" / "val_loss_by_train.lr.png"
    assert png.read_bytes()[:8] == PNG
    assert png in result["plots"]


def test_the_run_table_shows_hyperparameters_with_three_significant_digits(two_sweeps, tmp_path):
    a, b = two_sweeps
    result = compare([str(a), str(b)], ["val/loss"], tmp_path / "out")
    assert "0.00369" in result["table"] and "0.003688821" not in result["table"]


def test_an_unknown_by_key_names_the_closest(two_sweeps, tmp_path):
    with pytest.raises(RunsError, match="did you mean 'train.lr'"):
        compare([str(two_sweeps[0])], ["val/loss"], tmp_path / "out", by=["train.lrr"])


def test_cli_by_several_sweeps(two_sweeps, tmp_path, capsys):
    a, b = two_sweeps
    assert (
        main(["compare", str(a), str(b), "--by", "train.lr", "-m", "val/loss", "--out", str(tmp_path)]) == 0
    )
    out = capsys.readouterr().out
    assert "val/loss mean" in out and "0.0123" in out
