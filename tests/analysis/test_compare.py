"""`mosaics-lab compare`: finding runs, the table of final metrics and differing hparams, the plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from mosaics_lab.analysis.compare import compare
from mosaics_lab.analysis.runs import RunsError, discover_runs
from mosaics_lab.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def make_run(path: Path, lr: float, losses: list[float], status: str = "completed", **recipe_extra) -> Path:
    """A run dir as `train` writes it: recipe.yaml (with _run), metrics.jsonl, summary.json."""
    path.mkdir(parents=True)
    recipe = {
        "name": "gpt2_tiny",
        "seed": 1,
        "model": {"arch": "gpt2", "n_layer": 2},
        "train": {"lr": lr, "max_steps": 2 * len(losses)},
        "log": {"run_dir": str(path)},
        "_run": {"params": 1234, "git_sha": "abc"},
    }
    for key, value in recipe_extra.items():
        section, leaf = key.split("__")
        recipe[section][leaf] = value
    (path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    with open(path / "metrics.jsonl", "w") as f:
        for i, loss in enumerate(losses, start=1):
            f.write(
                json.dumps({"step": 2 * i, "time": 0.0, "train/loss": loss + 0.1, "val/loss": loss}) + "\n"
            )
    summary = {"status": status, "global_step": 2 * len(losses), "metrics": {"val/loss": losses[-1]}}
    (path / "summary.json").write_text(json.dumps(summary))
    (path / "checkpoints").mkdir()
    return path


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    """A sweep's folder: trials, a journal, plots, as the launcher leaves it."""
    root = tmp_path / "runs" / "study"
    make_run(root / "trial-0002", 0.01, [3.0, 2.5, 2.2])
    make_run(root / "trial-0010", 0.001, [3.0, 2.8, 2.6])
    make_run(root / "trial-0003", 0.1, [3.0, 4.0], status="pruned")
    (root / "journal.log").write_text("")
    (root / "plots").mkdir()
    return root


def test_a_folder_of_runs_is_expanded_in_natural_order(sweep_dir):
    runs = discover_runs([str(sweep_dir)])
    assert [p.name for p in runs] == ["trial-0002", "trial-0003", "trial-0010"]


def test_table_has_final_metrics_and_only_the_hparams_that_differ(sweep_dir, tmp_path):
    result = compare([str(sweep_dir)], ["val/loss"], tmp_path / "out")
    with open(tmp_path / "out" / "compare.csv") as f:
        rows = list(csv.DictReader(f))
    by_run = {r["run"]: r for r in rows}
    assert float(by_run["trial-0002"]["val/loss"]) == 2.2  # the last logged value
    assert by_run["trial-0003"]["status"] == "pruned" and by_run["trial-0003"]["step"] == "4"
    assert by_run["trial-0002"]["params"] == "1234"
    columns = rows[0].keys()
    assert "train.lr" in columns and "train.max_steps" in columns  # they differ
    assert "model.n_layer" not in columns and "seed" not in columns  # the same everywhere
    assert not any(c.startswith("log.") for c in columns)  # where runs logged is not an hparam
    assert "| trial-0010 |" in result["table"]
    assert (tmp_path / "out" / "compare.md").read_text().startswith("# Comparison of 3 run(s)")


def test_plots_of_chosen_scalars_across_runs(sweep_dir, tmp_path):
    result = compare([str(sweep_dir)], ["val/loss", "train/loss", "eval/never/logged"], tmp_path / "out")
    assert {p.name for p in result["plots"]} == {"val_loss.png", "train_loss.png"}
    assert all(p.read_bytes()[:8] == PNG for p in result["plots"])
    assert result["notes"] == ["eval/never/logged: no run logged it; not plotted"]


def test_globs_single_runs_and_sweep_trials_together(sweep_dir, tmp_path):
    single = make_run(tmp_path / "runs" / "gpt2_tiny" / "ab12cd34", 0.003, [3.0, 2.4])
    result = compare([str(sweep_dir / "trial-000*"), str(single)], None, tmp_path / "out")
    labels = [r.label for r in result["runs"]]
    assert labels == ["study/trial-0002", "study/trial-0003", "gpt2_tiny/ab12cd34"]


def test_default_output_is_beside_the_runs(sweep_dir, monkeypatch, capsys):
    monkeypatch.chdir(sweep_dir.parent.parent)
    assert main(["compare", "runs/study", "--metric", "val/loss"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| run | status | step | params | val/loss |")
    assert (Path("runs/study/compare/compare.md")).is_file()
    assert (Path("runs/study/compare/val_loss.png")).read_bytes()[:8] == PNG


def test_paths_without_runs_are_clear_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty")]) == 2
    assert "no runs found" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "nowhere")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    with pytest.raises(RunsError, match="no such file"):
        discover_runs([str(tmp_path / "nothing-*")])


def test_scalars_fall_back_to_tensorboard_events(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "tb_only"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"status": "completed", "global_step": 3, "metrics": {}}))
    with SummaryWriter(str(run)) as writer:
        for step, loss in [(1, 3.0), (2, 2.5), (3, 2.0)]:
            writer.add_scalar("val/loss", loss, step)
    result = compare([str(run)], ["val/loss"], tmp_path / "out")
    assert result["runs"][0].final("val/loss") == 2.0
    assert [p.name for p in result["plots"]] == ["val_loss.png"]
