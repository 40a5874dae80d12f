"""``mosaics-lab eval`` shows a progress bar over (points x batches) on stderr; ``--quiet`` none."""

from __future__ import annotations

from mosaics_lab.cli import main
from tests.evaluation.test_eval_cli import eval_argv, induction_run  # noqa: F401 (a fixture)


def test_eval_shows_progress_over_points_and_batches_and_quiet_turns_it_off(induction_run, capfd, tmp_path):  # noqa: F811
    options = f"--task induction --lengths 1x,2x --batches 2 --batch-size 2 --out {tmp_path}"
    assert main(eval_argv(induction_run, options)) == 0
    err = capfd.readouterr().err
    assert "eval induction" in err and "4/4" in err  # 2 lengths x 2 batches
    assert main(eval_argv(induction_run, options + " --quiet")) == 0
    assert "eval induction" not in capfd.readouterr().err
