"""analysis.study: a reproduction's numbers and report from stored results, without any run."""

from __future__ import annotations

import dataclasses
import json

import pytest

from mosaics_lab.analysis.study import (
    Gate,
    ReportSpec,
    learned,
    plot_curves,
    read_results,
    render,
    summarize,
    write_report,
)


def _run(arch, lr, seed, val_loss, acc_1x, acc_4x, chance=0.25, status="completed"):
    return {
        "run": f"runs/s/trial-{arch}-{lr}-{seed}",
        "group": {"model.arch": arch},
        "select": lr,
        "seed": seed,
        "recipe": f"icl_{arch}",
        "params": 1000,
        "status": status,
        "steps": 100,
        "sequences": 3200,
        "val_loss": val_loss,
        "wall_time_s": 10.0,
        "evals": {
            "induction": {
                "metrics": {"accuracy_at_1x": acc_1x},
                "axis": "length",
                "points": [
                    {"label": "1x", "chance": chance, "metrics": {"accuracy": acc_1x}},
                    {"label": "4x", "chance": chance, "metrics": {"accuracy": acc_4x}},
                ],
                "chance": None,
            }
        },
    }


SPEC = ReportSpec(
    title="Induction", evals=["induction"], gate=Gate(eval="induction", metric="accuracy", point="1x")
)


def results():
    runs = [
        _run("mosaic_v2", 1e-3, 0, 0.9, 0.95, 0.90),
        _run("mosaic_v2", 1e-3, 1, 1.1, 0.97, 0.80),
        _run("mosaic_v2", 3e-3, 0, 2.0, 0.10, 0.10),  # worse lr: not the one kept
        _run("llama", 1e-3, 0, 1.5, 0.30, 0.25),  # at chance + 0.05: did not learn
        _run("llama", 1e-3, 1, 1.5, 0.32, 0.25),
        _run("llama", 3e-3, 0, 9.0, 0.9, 0.9, status="failed: NonFiniteError"),  # never counted
    ]
    return {"version": 1, "meta": {"command": "mosaics-lab reproduce induction", "size": "cpu"}, "runs": runs}


def test_rows_keep_the_lr_with_the_lowest_mean_val_loss_and_report_mean_std_over_seeds():
    s = summarize(results(), SPEC)
    rows = {r["model.arch"]: r for r in s["main"]}
    assert rows["mosaic_v2"]["train.lr"] == 1e-3 and rows["mosaic_v2"]["seeds"] == "0,1"
    assert rows["mosaic_v2"]["val/loss"] == "1.0000 +- 0.1414 (n=2)"
    assert rows["mosaic_v2"]["induction accuracy_at_1x"] == "0.960 +- 0.014 (n=2)"
    assert len(s["calibration"]) == 3 and s["completed"] == 5


def test_the_gate_withholds_the_curves_of_a_row_that_did_not_learn():
    s = summarize(results(), SPEC)
    rows = {r["model.arch"]: r for r in s["main"]}
    assert rows["mosaic_v2"]["learned"] == "yes"
    assert rows["llama"]["learned"] == "no" and "did not learn at this budget" in rows["llama"]["gate"]
    assert list(s["curves"]["induction"]) == ["arch=mosaic_v2"]
    (mean_1x, _, n), (mean_4x, _, _) = s["curves"]["induction"]["arch=mosaic_v2"]["metrics"]["accuracy"]
    assert (mean_1x, mean_4x, n) == (pytest.approx(0.96), pytest.approx(0.85), 2)


def test_a_row_above_chance_on_average_but_at_chance_on_one_seed_has_not_learned():
    rows = [_run("x", 1, 0, 1.0, 0.99, 0.5), _run("x", 1, 1, 1.0, 0.25, 0.2)]
    ok, why = learned(rows, SPEC.gate)
    assert not ok and "0.620" in why


def test_no_gate_means_every_row_counts_and_a_missing_chance_uses_the_files():
    assert learned([_run("x", 1, 0, 1.0, 0.1, 0.1)], Gate(eval=None))[0]
    row = _run("x", 1, 0, 1.0, 0.5, 0.5, chance=None)
    assert not learned([row], Gate(eval="induction"))[0]
    assert learned([row], Gate(eval="induction", chance=0.1))[0]


def test_the_report_renders_again_from_its_stored_results_alone(tmp_path):
    out = tmp_path / "reports" / "induction.md"
    written = write_report(results(), SPEC, out)
    stored = read_results(written["results"])
    assert stored == json.loads(json.dumps(results()))
    text = out.read_text()
    assert "mosaics-lab reproduce induction" in text and "Did not learn at this budget" in text
    assert [p.name for p in written["figures"]] == ["induction_induction_accuracy.png"]
    assert written["figures"][0].stat().st_size > 1000
    out.unlink()
    assert render(stored, SPEC, written["figures"]) == text


def test_the_report_says_what_its_numbers_show_or_that_nobody_has_written_it():
    text = render(results(), SPEC)
    assert "## What the numbers show\n\nNot written yet for this size." in text
    read = dataclasses.replace(SPEC, reading="mosaic_v1 holds 1.0 to 16x: **reproduced**.")
    text = render(results(), read)
    assert "## What the numbers show\n\nmosaic_v1 holds 1.0 to 16x: **reproduced**." in text
    assert text.index("What the numbers show") < text.index("## Calibration")


def test_the_report_names_every_kept_value_that_the_search_did_not_bracket():
    res = results()
    res["meta"]["chosen"] = [1e-3, 1e-3]
    res["meta"]["not_bracketed"] = ["llama_icl: train.lr = 0.001 is the lowest value tried (0.001, 0.003)"]
    text = render(res, SPEC)
    assert "**Not bracketed**" in text and "- llama_icl: train.lr = 0.001 is the lowest value tried" in text
    res["meta"]["not_bracketed"] = []
    text = render(res, SPEC)
    assert "Not bracketed" not in text and "Every kept value is bracketed" in text
    del res["meta"]["not_bracketed"]  # a report written before the search could extend itself
    assert "bracketed" not in render(res, SPEC)


def _png_width(path) -> int:
    import struct

    return struct.unpack(">I", path.read_bytes()[16:20])[0]


def test_a_per_position_curve_is_drawn_against_position_with_a_late_context_zoom(tmp_path):
    # 128 integer labels: the categorical axis of the short curves made its ticks unreadable.
    positions = [str(t) for t in range(128)]
    curve = {
        "labels": positions,
        "chance": [None] * 128,
        "metrics": {"loss": [(2.0 / (t + 1) + 0.2, 0.01, 2) for t in range(128)]},
    }
    (long_png,) = plot_curves({"per_position": {"arch=a": curve, "arch=b": curve}}, tmp_path, "long")
    short = {
        "labels": ["1x", "2x"],
        "chance": [0.1, 0.1],
        "metrics": {"accuracy": [(1.0, 0.0, 2), (0.5, 0.1, 2)]},
    }
    (short_png,) = plot_curves({"induction": {"arch=a": short}}, tmp_path, "short")
    assert _png_width(long_png) == 9 * 90  # two panels: the whole curve (log x) and positions >= 16
    assert _png_width(short_png) == int(5.5 * 90)


def _budget_run(arch, steps, seed, acc, batch=32):
    return {
        "run": f"runs/s/trial-{arch}-{steps}-{seed}",
        "group": {"model.arch": arch, "train.max_steps": steps},
        "select": 1e-3,
        "seed": seed,
        "recipe": f"icl_{arch}",
        "params": 1000,
        "status": "completed",
        "steps": steps,
        "sequences": steps * batch,
        "val_loss": 1.0,
        "wall_time_s": 10.0,
        "evals": {"mqar": {"metrics": {"accuracy": acc}, "axis": None, "points": [], "chance": 0.002}},
    }


AXIS_SPEC = ReportSpec(
    title="MQAR",
    group_by=["model.arch", "train.max_steps"],
    axis="train.max_steps",
    evals=["mqar"],
    gate=Gate(eval="mqar", metric="accuracy", point=""),
)


def test_a_study_with_an_axis_draws_each_eval_metric_against_it_with_every_row(tmp_path):
    # MQAR's claim is accuracy vs sequences seen: a budget at which an architecture is still at chance
    # is a point of that curve (the gate withholds extrapolation curves, not the axis)
    runs = [
        _budget_run(arch, steps, seed, acc)
        for arch, accs in (("llama", (0.002, 0.6)), ("mosaic_v1", (0.5, 1.0)))
        for steps, acc in zip((125, 2000), accs)
        for seed in (0, 1)
    ]
    res = {"version": 1, "meta": {"command": "mosaics-lab reproduce mqar", "size": "cpu"}, "runs": runs}
    s = summarize(res, AXIS_SPEC)
    series = s["axis_curves"]["mqar"]["accuracy"]
    assert sorted(series) == ["arch=llama", "arch=mosaic_v1"]
    assert series["arch=llama"]["x"] == [4000, 64000]  # sequences seen: steps x batch, in order
    assert [m for m, _, _ in series["arch=llama"]["stats"]] == [pytest.approx(0.002), pytest.approx(0.6)]
    assert series["arch=llama"]["learned"] == [False, True]
    assert s["axis_label"] == "training sequences seen"
    out = tmp_path / "mqar.md"
    written = write_report(res, AXIS_SPEC, out)
    assert [p.name for p in written["figures"]] == ["mqar_mqar_accuracy_vs_sequences.png"]
    text = out.read_text()
    assert "![mqar_mqar_accuracy_vs_sequences](mqar_mqar_accuracy_vs_sequences.png)" in text
    assert "Did not learn at this point of `train.max_steps`" in text and "this budget**" not in text


def test_an_axis_that_is_not_the_budget_is_drawn_against_its_own_values():
    runs = [
        {**_budget_run("a", 100, seed, acc), "group": {"model.arch": "a", "data.n_lang": n}}
        for n, acc in ((100, 0.6), (1000, 0.9))
        for seed in (0, 1)
    ]
    spec = dataclasses.replace(AXIS_SPEC, group_by=["model.arch", "data.n_lang"], axis="data.n_lang")
    s = summarize({"version": 1, "meta": {}, "runs": runs}, spec)
    assert s["axis_curves"]["mqar"]["accuracy"]["arch=a"]["x"] == [100, 1000]
    assert s["axis_label"] == "n_lang"


def test_rows_are_in_numeric_order_of_their_group_and_an_unnamed_gate_point_reads_cleanly():
    runs = [_budget_run("a", steps, seed, 0.01) for steps in (125, 500, 2000, 4000) for seed in (0, 1)]
    s = summarize({"version": 1, "meta": {}, "runs": runs}, AXIS_SPEC)
    assert [r["train.max_steps"] for r in s["main"]] == [125, 500, 2000, 4000]  # not "125" < "2000" < "500"
    assert AXIS_SPEC.gate.point == ""
    assert all("accuracy 0.010 <= " in r["gate"] for r in s["main"]), s["main"][0]["gate"]


def test_the_hollow_markers_of_a_row_that_did_not_learn_are_drawn_above_its_filled_ones(
    tmp_path, monkeypatch
):
    import mosaics_lab.analysis.study as study

    figures = []
    real_save = study._save
    monkeypatch.setattr(
        study, "_save", lambda fig, ax, path: (figures.append(fig), real_save(fig, ax, path))[1]
    )
    runs = [_budget_run("llama", steps, seed, 0.002) for steps in (125, 2000) for seed in (0, 1)]
    s = summarize({"version": 1, "meta": {}, "runs": runs}, AXIS_SPEC)
    study.plot_axis_curves(s["axis_curves"], s["axis_label"], tmp_path, "mqar")
    (fig,) = figures
    lines = fig.axes[0].get_lines()
    filled = [ln for ln in lines if ln.get_marker() == "o" and ln.get_markerfacecolor() != "white"]
    hollow = [ln for ln in lines if ln.get_markerfacecolor() == "white"]
    assert filled and hollow
    assert min(h.get_zorder() for h in hollow) > max(f.get_zorder() for f in filled)
