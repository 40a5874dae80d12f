"""``make reproduce-icl``: the report written from results, its command-line errors, and (slow) the
whole protocol end to end on a two-step budget."""

from __future__ import annotations

import json

import pytest

from mosaics_lab.evaluation import reproduce as R

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_results(tmp_path) -> dict:
    rows = []
    for task, chance in (("mqar", 1 / 16), ("regbench", None)):
        for arch, acc in zip(R.ARCHS, (0.9, 0.5, 0.1)):
            rows.append(
                {
                    "task": task,
                    "arch": arch,
                    "params": 100_000,
                    "lr_val_loss": {"0.003": 1.5, "0.01": 1.2},
                    "failed": [],
                    "best_lr": 0.01,
                    "val_loss": 1.2,
                    "accuracy": acc,
                    "tvd": 0.2 if task == "regbench" else None,
                    "chance": chance,
                    "test_examples": 256,
                    "train_s": 100.0,
                    "run_train_s": [50.0, 50.0],
                    "eval_s": 5.0,
                    "run_dir": None,
                    "task_config": {"seq_len": 256},
                }
            )
    return {
        "rows": rows,
        "steps": 500,
        "batch_size": 16,
        "lrs": [0.003, 0.01],
        "jobs": 2,
        "eval_examples": 256,
        "data_s": {"mqar": 3.0, "regbench": 20.0},
        "wall_s": 1500.0,
        "loadavg": [1.0, 2.0],
        "machine": {"cpus": 2, "git_sha": "abc", "torch": "x", "python": "3", "platform": "p"},
        "overrides": [],
        "runs_root": str(tmp_path / "runs"),
    }


def test_report_has_the_table_the_findings_and_its_plots(tmp_path):
    R.write_report(fake_results(tmp_path), tmp_path)
    report = (tmp_path / R.REPORT).read_text()
    table = (tmp_path / R.TABLE).read_text()
    assert "| mqar | mosaic_v1 | 100,000 | 0.01 | 1.200 | 0.900 | — | 100 s |" in table
    assert "| regbench | llama | 100,000 | 0.01 | 1.200 | 0.100 | 0.200 | 100 s |" in table
    assert table.split("\n\n")[0] in report and "total wall time 25.0 min" in table
    assert "mosaic_v1 0.900, mosaic_v2 0.500, llama 0.100 (chance, one of the 16 values" in report
    for png in (R.ACCURACY_PNG, R.CURVES_PNG):
        assert png in report and (tmp_path / png).read_bytes()[:8] == PNG_MAGIC


def test_report_only_rewrites_the_report_from_the_saved_results(tmp_path, capsys):
    assert R.main(["--report-only", "--out", str(tmp_path)]) == 2
    assert "run without --report-only first" in capsys.readouterr().err
    (tmp_path / R.RESULTS).write_text(json.dumps(fake_results(tmp_path)))
    assert R.main(["--report-only", "--out", str(tmp_path)]) == 0
    assert "| regbench | mosaic_v2 | 100,000 |" in (tmp_path / R.REPORT).read_text()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lrs", "fast"], "--lrs must be comma-separated"),
        (["--tasks", "mqr"], "valid: mqar, regbench"),
        (["--steps", "0"], ">= 1"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys, tmp_path):
    assert R.main([*argv, "--out", str(tmp_path), "--runs", str(tmp_path / "runs")]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_reproduce_runs_the_protocol_on_a_two_step_budget(tmp_path):
    argv = [
        "--out",
        str(tmp_path / "reports"),
        "--runs",
        str(tmp_path / "runs"),
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--lrs",
        "0.003,0.01",
        "--eval-batches",
        "1",
        "--archs",
        "mosaic_v1,llama",
        f"data.path={tmp_path}/data/${{data.generate}}",
        "data.generate_args.num_train=16",
        "data.generate_args.num_val=8",
    ]
    assert R.main(argv) == 0
    results = json.loads((tmp_path / "reports" / "icl_results.json").read_text())
    assert [(r["task"], r["arch"]) for r in results["rows"]] == [
        ("mqar", "mosaic_v1"),
        ("mqar", "llama"),
        ("regbench", "mosaic_v1"),
        ("regbench", "llama"),
    ]
    for row in results["rows"]:
        assert set(row["lr_val_loss"]) == {"0.003", "0.01"}
        assert row["val_loss"] == min(row["lr_val_loss"].values())
        assert 0.0 <= row["accuracy"] <= 1.0
        assert (row["tvd"] is not None) == (row["task"] == "regbench")
    assert (tmp_path / "reports" / R.REPORT).is_file() and (tmp_path / "reports" / R.TABLE).is_file()
