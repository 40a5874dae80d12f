"""What the sweep command shows while it runs (issue 14): a bar of the study's trials, one line per
finished trial, nothing of the trials' own output; --quiet shows neither bar nor lines."""

from __future__ import annotations

import re
import sys

import pytest

from mosaics_lab import constants as C

from .conftest import run_sweep, write_sweep

GRID = {
    "sampler": {"type": "grid"},
    "pruner": {"type": "none"},
    "grid": [{"train.lr": 0.00123456}, {"train.lr": 0.002, "train.warmup_steps": 13}],  # the 2nd crashes
    "seeds": [0],
}
LINE = re.compile(r"^\[s\] trial (\d+) (COMPLETE|PRUNED|FAIL)\b(.*) \| (.*) \| (\d+\.\d) s$")


def trial_lines(text: str) -> list[re.Match]:
    return [m for m in map(LINE.match, text.splitlines()) if m]


def test_one_line_per_finished_trial_with_its_state_objective_values_and_wall_time(tmp_path, ledger, capfd):
    path = write_sweep(tmp_path, **GRID)
    assert run_sweep(path, tmp_path / "runs") == 0
    out = capfd.readouterr().out
    lines = trial_lines(out)
    assert [(m[1], m[2]) for m in lines] == [("0", "COMPLETE"), ("1", "FAIL")], out
    done, failed = lines
    assert done[3] == " val/loss=2.77037"  # 3 - 0.1 * 6 + 50 * lr * 6, the fake trainer's final value
    assert done[4] == "train.lr=0.00123 train.warmup_steps=30 seed=0", "values at 3 significant digits"
    assert "deliberate crash" in failed[3] and failed[4] == "train.lr=0.002 train.warmup_steps=13 seed=0"
    assert float(done[5]) > 0


def test_a_trials_own_output_reaches_its_log_file_only(tmp_path, ledger, capfd):
    path = write_sweep(tmp_path, **GRID)
    out_dir = tmp_path / "runs"
    assert run_sweep(path, out_dir) == 0
    captured = capfd.readouterr()
    assert "fake train" not in captured.out + captured.err
    log = (out_dir / "s" / "trial-0000" / C.TRIAL_LOG).read_text()
    assert "fake train: step 6 on stdout" in log and "fake train: step 6 on stderr" in log


def test_quiet_shows_no_bar_and_no_trial_lines(tmp_path, ledger, capfd, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal would get a bar
    path = write_sweep(tmp_path, **GRID)
    assert run_sweep(path, tmp_path / "runs", "--quiet") == 0
    captured = capfd.readouterr()
    assert not trial_lines(captured.out)
    assert "trials [" not in captured.err and "done," not in captured.err
    assert "1 COMPLETE, 1 FAIL" in captured.out, "the final table is still printed"


@pytest.mark.parametrize("tty", [True, False])
def test_the_bar_counts_the_studys_trials_on_a_terminal_only(tmp_path, ledger, capfd, monkeypatch, tty):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    path = write_sweep(tmp_path, **GRID)
    assert run_sweep(path, tmp_path / "runs") == 0
    err = capfd.readouterr().err
    if not tty:
        assert "done," not in err, "no bar in logs"
        return
    assert "2/2 trials" in err
    assert "1 done, 0 running, 1 failed; best val/loss 2.7" in err
    assert re.search(r"0 done, 1 running, 0 failed", err), "it shows running trials too"
