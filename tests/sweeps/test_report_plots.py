"""sweeps.report on a study built in memory: the contour plot is drawn (scipy is a dependency) and
parameter values read with 3 significant digits in plot labels and tables."""

from __future__ import annotations

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from mosaics_lab.sweeps.report import plot_cells, trial_rows, write_plots
from mosaics_lab.sweeps.spec import SEED_KEY

LR = FloatDistribution(1e-4, 1e-1, log=True)
WD = FloatDistribution(0.0, 0.5)


def study_of(values: list[tuple[float, float, float]]) -> optuna.Study:
    study = optuna.create_study(direction="minimize")
    for lr, wd, loss in values:
        study.add_trial(
            create_trial(
                params={"train.lr": lr, "train.weight_decay": wd},
                distributions={"train.lr": LR, "train.weight_decay": WD},
                value=loss,
            )
        )
    return study


STUDY = [
    (0.003688821332197714, 0.19123456789, 1.234567),
    (0.0123456789, 0.05, 1.5),
    (0.000987654321, 0.4, 1.9),
]


def test_the_contour_plot_is_drawn_for_two_parameters(tmp_path):
    written, skipped = write_plots(study_of(STUDY), tmp_path)
    assert tmp_path / "contour.png" in written, skipped


def test_cell_labels_show_three_significant_digits():
    ax = plot_cells(study_of(STUDY))
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == "lr=0.00369, weight_decay=0.191 (n=1)"  # best first
    assert not any("0.0036888" in label or "0.1912" in label for label in labels)


def test_summary_tables_round_parameters_but_not_the_objective():
    from mosaics_lab.analysis.tables import markdown_table
    from mosaics_lab.sweeps.report import param_digits

    rows, params = trial_rows(study_of(STUDY))
    text = markdown_table(rows, ["trial", "value", *params], digits=param_digits(params))
    assert "| 0 | 1.2346 | 0.00369 | 0.191 |" in text
    assert SEED_KEY not in params
