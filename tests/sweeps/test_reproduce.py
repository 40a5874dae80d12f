"""mosaics-lab reproduce: the study files, the calibrate -> main plan, the choice of the calibrated
value from stored runs, and (slow) a whole study at --size smoke."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest
import yaml

from mosaics_lab import constants as C
from mosaics_lab.cli import main
from mosaics_lab.sweeps.reproduce import (
    STUDY_DIR,
    calibration_round_spec,
    calibration_spec,
    choose,
    main_spec,
    main_study_name,
    parse_reproduce,
    report_spec,
    reuse_finished,
    size_overrides,
    study_path,
)
from mosaics_lab.sweeps.spec import SweepError, at_size, load_sweep_spec, resolve_sweep
from tests.conftest import REPO

STUDIES = sorted(p.stem for p in (REPO / STUDY_DIR).glob("*.yaml"))


def test_the_six_studies_of_the_issue_are_shipped():
    assert STUDIES == ["induction", "manyshot", "mqar", "multidoc_qa", "regbench", "stories"]


@pytest.mark.parametrize("name", STUDIES)
def test_every_study_has_its_plan_sizes_and_seeds(name):
    path = REPO / STUDY_DIR / f"{name}.yaml"
    spec = load_sweep_spec(path)
    rep = parse_reproduce(spec.reproduce, str(path))
    assert set(spec.sizes) == {"smoke", "cpu", "gpu"}
    assert len(spec.seeds) >= 2 and spec.sampler.type == "grid"
    assert rep.calibrate in spec.space and len(spec.space[rep.calibrate].choices) >= 3
    assert all("recipe" in cell for cell in spec.grid) and len(spec.grid) >= 3
    archs = {yaml.safe_load((path.parent / cell["recipe"]).read_text())["name"] for cell in spec.grid}
    assert len(archs) >= 2  # a comparison
    if rep.axis is not None:
        assert set(rep.axis.values) == set(spec.sizes) == set(rep.axis.calibrate_at)
    assert rep.evaluate and rep.title


@pytest.mark.parametrize("name", STUDIES)
def test_every_size_of_every_study_builds_every_recipe(name, monkeypatch):
    """resolve_sweep builds every cell's recipe under every size's overrides (e.g. induction's
    32-token cpu size), so a bad size fails here rather than hours into a study."""
    monkeypatch.chdir(REPO)
    sweep = resolve_sweep(STUDY_DIR / f"{name}.yaml", size="cpu")
    assert sweep.size == "cpu" and sweep.total_steps > 0


def test_the_induction_cpu_size_trains_where_the_baseline_learns():
    """reports/icl_baselines.md: at CPU budgets the llama escapes its plateau at 32 tokens, batch 128."""
    spec = load_sweep_spec(REPO / STUDY_DIR / "induction.yaml")
    cpu = spec.sizes["cpu"]
    assert cpu["model.block_size"] == cpu["data.generate_args.seq_len"] == 32
    assert cpu["train.global_batch_size"] >= 128
    assert spec.sizes["gpu"].get("model.block_size", spec.overrides["model.block_size"]) == 256


@pytest.mark.parametrize("name", STUDIES)
def test_mosaic_v2_windows_stay_below_the_training_context_at_cpu_and_gpu_sizes(name, monkeypatch):
    """With the STM window as long as the training context, the STM alone solves the task in
    training and the LTM never has to learn it: on induction at 32 tokens with the recipe's h = 32,
    0.55 at 2x and 0.14 at 16x, where h = 8 holds 1.0 to 16x (reports/induction.md)."""
    from mosaics_lab.config.loader import load_recipe
    from mosaics_lab.sweeps.spec import format_override

    monkeypatch.chdir(REPO)
    for size in ("cpu", "gpu"):
        sweep = resolve_sweep(STUDY_DIR / f"{name}.yaml", size=size, validate=False)
        for cell in sweep.cells:
            values = {**sweep.overrides, **cell.values}
            model = load_recipe(cell.recipe, [format_override(k, v) for k, v in values.items()]).model
            if model.arch != "mosaic_v2":
                continue
            assert model.stm_window < model.block_size, (size, cell.index, model.stm_window, model.block_size)
            assert max(model.ltm_delay_train) <= model.stm_window and model.ltm_delay_eval < model.stm_window


@pytest.mark.parametrize("name", STUDIES)
def test_every_study_can_search_beyond_both_edges_of_its_grid_at_the_cpu_and_gpu_sizes(name):
    """Three of the stories study's four kept learning rates were grid edges: every study lists
    values below and above its choices so that the search can bracket what it keeps."""
    path = REPO / STUDY_DIR / f"{name}.yaml"
    spec = load_sweep_spec(path)
    rep = parse_reproduce(spec.reproduce, str(path))
    choices = spec.space[rep.calibrate].choices
    for size in ("cpu", "gpu"):
        beyond = rep.calibrate_beyond[size]
        assert min(beyond) < min(choices) and max(beyond) > max(choices), (name, size)
        assert not set(beyond) & set(choices), (name, size)
    assert "smoke" not in rep.calibrate_beyond  # the smoke size stays a fixed number of runs


def test_calibration_runs_every_value_on_the_first_seed_at_one_axis_point():
    path = REPO / STUDY_DIR / "mqar.yaml"
    spec = load_sweep_spec(path)
    rep = parse_reproduce(spec.reproduce, str(path))
    cal = calibration_spec(spec, rep, "cpu", path)
    assert cal.study == "reproduce_mqar-calibrate" and cal.seeds == [0]
    assert all(cell["train.max_steps"] == 2000 for cell in cal.grid) and len(cal.grid) == 3
    assert "train.lr" in cal.space  # crossed with the cells: 3 x 3 trials


def test_the_main_study_runs_each_cell_at_its_value_on_every_axis_point_and_seed():
    path = REPO / STUDY_DIR / "mqar.yaml"
    spec = load_sweep_spec(path)
    rep = parse_reproduce(spec.reproduce, str(path))
    main_ = main_spec(spec, rep, "cpu", [1e-3, 3e-3, 1e-2], path)
    assert main_.study == "reproduce_mqar" and "train.lr" not in main_.space
    # 3 cells x 4 budgets x 2 seeds, less each cell's seed 0 at the calibration budget (2,000 steps)
    assert len(main_.grid) == 3 * 4 * 2 - 3
    first = [c for c in main_.grid if c["train.lr"] == 1e-3]
    assert [(c["train.max_steps"], c["seed"]) for c in first] == [
        (125, 0), (125, 1), (500, 0), (500, 1), (2000, 1), (4000, 0), (4000, 1)
    ]  # fmt: skip


@pytest.mark.parametrize("name", STUDIES)
def test_the_main_study_never_trains_a_calibration_run_again(name):
    """The first seed at the calibration point, at the chosen value, is the calibration run itself:
    induction's main study trained it again and got the same val/loss bit for bit (1.3969837509e-09,
    6.0535962909e-09, 6.0535960245e-08), a fifth of the study's training for nothing."""
    path = REPO / STUDY_DIR / f"{name}.yaml"
    spec = load_sweep_spec(path)
    rep = parse_reproduce(spec.reproduce, str(path))
    for size in spec.sizes:
        cal = calibration_spec(at_size(spec, size), rep, size, path)
        chosen = [spec.space[rep.calibrate].choices[0]] * len(spec.grid)
        main_ = main_spec(at_size(spec, size), rep, size, chosen, path)
        calibration_runs = [
            {**cell, rep.calibrate: v, "seed": cal.seeds[0]} for cell, v in zip(cal.grid, chosen)
        ]
        assert not [c for c in main_.grid if c in calibration_runs], (size, name)
        n_axis = len(rep.axis.values[size]) if rep.axis else 1
        assert len(main_.grid) == len(spec.grid) * (n_axis * len(spec.seeds) - 1)
        assert main_.seeds == [] and all("seed" in c for c in main_.grid)


@pytest.mark.parametrize("name", ["mqar", "regbench"])
def test_a_study_with_an_axis_reports_against_it(name):
    spec = load_sweep_spec(REPO / STUDY_DIR / f"{name}.yaml")
    rep = parse_reproduce(dict(spec.reproduce or {}), name)
    rspec = report_spec(rep, "cpu")
    assert rspec.axis == rep.axis.key and rspec.axis in rspec.group_by


def test_sizes_become_overrides_and_an_unknown_study_names_the_studies():
    spec = load_sweep_spec(REPO / STUDY_DIR / "induction.yaml")
    assert "train.max_steps=3" in size_overrides(spec, "smoke")
    with pytest.raises(SweepError, match="studies: induction, manyshot"):
        study_path("inductoin")


def test_a_missing_reproduce_section_or_title_is_an_error():
    with pytest.raises(SweepError, match="needs a `reproduce:` section"):
        parse_reproduce({}, "x.yaml")
    with pytest.raises(SweepError, match="title is required"):
        parse_reproduce({"claim": "c"}, "x.yaml")
    with pytest.raises(SweepError, match="reproduce.gate"):
        parse_reproduce({"title": "t", "gate": {"margn": 1}}, "x.yaml")


def _fake_run(root: Path, n: int, name: str, lr: float, val_loss: float | None, status="completed", seed=0):
    run = root / f"trial-{n}"
    run.mkdir(parents=True)
    recipe = {"name": name, "seed": seed, "train": {"lr": lr}}
    (run / C.RECIPE_FILE).write_text(yaml.safe_dump(recipe))
    (run / C.SUMMARY_FILE).write_text(json.dumps({"status": status, "global_step": 10}))
    if val_loss is not None:
        (run / C.METRICS_FILE).write_text(json.dumps({"step": 10, C.VAL_LOSS: val_loss}) + "\n")


def test_choose_keeps_per_cell_the_value_with_the_lowest_final_val_loss(tmp_path):
    path = REPO / STUDY_DIR / "induction.yaml"
    spec = load_sweep_spec(path)
    rep = parse_reproduce(spec.reproduce, str(path))
    names = [yaml.safe_load((path.parent / c["recipe"]).read_text())["name"] for c in spec.grid]
    n = 0
    for name in names:
        for lr, loss in ((1e-3, 2.0), (3e-3, 1.0), (1e-2, 3.0)):
            _fake_run(tmp_path, n, name, lr, loss)
            n += 1
    _fake_run(tmp_path, n, names[0], 1e-2, 0.1, status="failed: NonFiniteError")  # never chosen
    found = choose(tmp_path, spec, rep, path)
    assert found.chosen == [3e-3, 3e-3, 3e-3] and len(found.table) == 10  # the failed run is listed
    assert [r.name for r in found.best_runs] == ["trial-1", "trial-4", "trial-7"]  # reused as the first seed
    assert found.next_values([1e-4, 3e-4, 3e-2]) == []  # bracketed: nothing more to try
    with pytest.raises(SweepError, match="grid cell 0"):
        choose(tmp_path / "empty", spec, rep, path)


def _study(name: str):
    path = REPO / STUDY_DIR / f"{name}.yaml"
    spec = load_sweep_spec(path)
    rep = parse_reproduce(spec.reproduce, str(path))
    names = [yaml.safe_load((path.parent / c["recipe"]).read_text())["name"] for c in spec.grid]
    return path, spec, rep, names


def test_a_kept_value_at_an_edge_is_searched_beyond_one_round_at_a_time(tmp_path):
    """The stories study kept 1e-2 for mosaic_v1 and 1e-3 for mosaic_v2 and llama: edges of the grid,
    so a better value may lie outside it. Each round tries the nearest value beyond an edge."""
    path, spec, rep, names = _study("stories")
    beyond = [1e-4, 3e-4, 3e-2]
    r1, r2, r3 = tmp_path / "r1", tmp_path / "r2", tmp_path / "r3"
    losses = {0: (3.0, 2.0, 1.0), 1: (1.0, 2.0, 3.0), 2: (2.0, 1.0, 3.0), 3: (1.0, 2.0, 3.0)}
    n = 0
    for cell, name in enumerate(names):
        for lr, loss in zip((1e-3, 3e-3, 1e-2), losses[cell]):
            _fake_run(r1, n, name, lr, loss)
            n += 1
    found = choose([r1], spec, rep, path)
    assert found.chosen == [1e-2, 1e-3, 3e-3, 1e-3]
    assert [found.edge(i) for i in range(4)] == ["highest", "lowest", None, "lowest"]
    assert found.next_values(beyond) == [(0, 3e-2), (1, 3e-4), (3, 3e-4)]
    assert found.next_values([]) == []
    edges = found.edges(["v1", "gpt2", "v2", "llama"], "train.lr")
    assert len(edges) == 3
    assert edges[0] == "v1: train.lr = 0.01 is the highest value tried (0.001, 0.003, 0.01)"

    # round 2: mosaic_v1 diverges at 3e-2 (bracketed from above), cell 1 improves, cell 3 does not
    _fake_run(r2, 0, names[0], 3e-2, None, status="failed: NonFiniteError: loss is nan")
    _fake_run(r2, 1, names[1], 3e-4, 0.5)
    _fake_run(r2, 2, names[3], 3e-4, 1.5)
    _fake_run(r2, 3, names[3], 1e-4, 0.1, status="interrupted")  # stopped: its round trains it again
    found = choose([r1, r2], spec, rep, path)
    assert found.chosen == [1e-2, 3e-4, 3e-3, 1e-3] and found.edge(0) is None and found.edge(3) is None
    assert found.next_values(beyond) == [(1, 1e-4)]  # still the lowest tried
    assert {row["round"] for row in found.table} == {1, 2} and len(found.table) == 15
    assert [r for r in found.table if r["status"].startswith("failed")][0]["val/loss"] is None

    _fake_run(r3, 0, names[1], 1e-4, 0.7)
    found = choose([r1, r2, r3], spec, rep, path)
    assert found.chosen[1] == 3e-4 and found.next_values(beyond) == []  # every cell bracketed
    assert found.best_runs[1] == r2 / "trial-1"


def test_a_calibration_round_trains_only_its_cells_on_the_first_seed_at_the_calibration_point():
    path = REPO / STUDY_DIR / "mqar.yaml"
    spec = load_sweep_spec(path)
    rep = parse_reproduce(spec.reproduce, str(path))
    ext = calibration_round_spec(at_size(spec, "cpu"), rep, "cpu", path, [(0, 3e-2), (2, 3e-4)], 2)
    assert ext.study == "reproduce_mqar-calibrate-2" and ext.seeds == [0] and "train.lr" not in ext.space
    assert [(c["recipe"], c["train.lr"], c["train.max_steps"]) for c in ext.grid] == [
        (spec.grid[0]["recipe"], 3e-2, 2000), (spec.grid[2]["recipe"], 3e-4, 2000)
    ]  # fmt: skip
    sweep = resolve_sweep(path, [], spec=ext, size="cpu")
    assert [c.params["train.lr"] for c in sweep.cells] == [3e-2, 3e-4]


def test_after_more_rounds_the_main_study_reuses_the_earlier_runs_it_still_needs(tmp_path):
    path, spec, rep, names = _study("stories")
    assert main_study_name("reproduce_stories", 1) == "reproduce_stories"  # one round: as before
    assert main_study_name("reproduce_stories", 3) == "reproduce_stories-r3"
    old = tmp_path / "reproduce_stories"
    _fake_run(old, 0, names[0], 1e-2, 0.27, seed=1)  # mosaic_v1's value is still kept: reused
    _fake_run(old, 1, names[2], 1e-3, 0.26, seed=1)  # mosaic_v2 now keeps 3e-4: trained again
    _fake_run(old, 2, names[1], 3e-3, 0.27, seed=1, status="interrupted")  # unfinished: trained again
    grid = main_spec(spec, rep, "cpu", [1e-2, 3e-3, 3e-4, 3e-4], path).grid
    remaining, reused = reuse_finished(grid, [old, tmp_path / "reproduce_stories-r2"], path)
    assert reused == [old / "trial-0"]
    assert [(c["recipe"], c["train.lr"]) for c in remaining] == [
        (spec.grid[1]["recipe"], 3e-3), (spec.grid[2]["recipe"], 3e-4), (spec.grid[3]["recipe"], 3e-4)
    ]  # fmt: skip


@pytest.mark.slow
def test_a_whole_study_runs_at_smoke_size_and_its_report_renders_again(tmp_path, capsys):
    out = tmp_path / "runs"
    args = [
        "reproduce",
        "induction",
        "--size",
        "smoke",
        "--out",
        str(out),
        "--quiet",
        f"data.path={tmp_path / 'data'}",
    ]
    assert main(args) == 0
    report = out / "reproduce_induction" / "report" / "induction.md"
    text = report.read_text()
    assert "Induction heads" in text and "## Calibration" in text and "mosaic_v2" in text
    trials = sorted((out / "reproduce_induction").glob("trial-*"))
    assert len(trials) == 3  # 3 architectures x seed 1 at the calibrated lr; seed 0 is reused
    results = json.loads(report.with_name("induction_results.json").read_text())
    assert len(results["meta"]["chosen"]) == 3 and len(results["meta"]["calibration"]) == 9
    reused = [Path(p) for p in results["meta"]["reused"]]
    assert len(reused) == 3 and all(p.parent.name == "reproduce_induction-calibrate" for p in reused)
    assert all((t / "eval" / "induction.json").is_file() for t in [*trials, *reused])
    assert sorted((r["group"]["model.arch"], r["seed"]) for r in results["runs"]) == [
        (arch, seed) for arch in ("llama", "mosaic_v1", "mosaic_v2") for seed in (0, 1)
    ]
    assert "reused rather than trained twice" in text
    # a second run continues: nothing is retrained or re-evaluated, the report is the same
    assert main(args) == 0
    assert len(sorted((out / "reproduce_induction").glob("trial-*"))) == 3
    report.unlink()
    assert main([*args[:6], "--report-only"]) == 0
    assert "Induction heads" in report.read_text()


@pytest.mark.slow
def test_a_study_whose_kept_value_is_an_edge_searches_beyond_it_and_reuses_its_main_runs(tmp_path):
    """One architecture, one learning rate: the kept value is trivially an edge. Run as shipped (no
    `calibrate_beyond`), the report says so; with a value beyond it, a second calibration round
    trains it, and the main study after two rounds reuses the first main study's run where the kept
    value did not change."""
    source = REPO / STUDY_DIR / "induction.yaml"
    raw = yaml.safe_load(source.read_text())
    llama = str((source.parent / raw["grid"][2]["recipe"]).resolve())
    raw.update(study="reproduce_bracket", base_recipe=llama, grid=[{"recipe": llama}])
    raw["space"]["train.lr"]["choices"] = [1e-3]
    study = tmp_path / "bracket.yaml"
    study.write_text(yaml.safe_dump(raw))
    out = tmp_path / "runs"
    args = ["reproduce", str(study), "--size", "smoke", "--out", str(out), "--quiet"]
    args.append(f"data.path={tmp_path / 'data'}")
    assert main(args) == 0
    report = out / "reproduce_bracket" / "report" / "bracket.md"
    meta = json.loads(report.with_name("bracket_results.json").read_text())["meta"]
    assert meta["not_bracketed"] == ["induction_llama: train.lr = 0.001 is the only value tried"]
    assert "**Not bracketed**" in report.read_text()
    first_main = sorted((out / "reproduce_bracket").glob("trial-*"))
    assert len(first_main) == 1  # seed 1 (seed 0 is the calibration run)

    raw["reproduce"]["calibrate_beyond"] = {"smoke": [1e-2]}
    study.write_text(yaml.safe_dump(raw))
    assert main(args) == 0
    assert len(list((out / "reproduce_bracket-calibrate-2").glob("trial-*"))) == 1
    meta = json.loads(report.with_name("bracket_results.json").read_text())["meta"]
    assert [(r["train.lr"], r["round"]) for r in meta["calibration"]] == [(1e-3, 1), (1e-2, 2)]
    kept = meta["chosen"][0]
    second_main = sorted((out / "reproduce_bracket-r2").glob("trial-*"))
    if kept == 1e-3:  # seed 1 at 1e-3 exists already: nothing trained again
        assert second_main == [] and str(first_main[0]) in meta["reused"]
    else:
        assert len(second_main) == 1 and str(first_main[0]) not in meta["reused"]
    assert meta["not_bracketed"] == ([] if kept == 1e-3 else [
        "induction_llama: train.lr = 0.01 is the highest value tried (0.001, 0.01)"
    ])  # fmt: skip
    assert len(meta["reused"]) == 2 - len(second_main)  # calibration run (+ the first main run)


@pytest.mark.slow
def test_a_study_saved_without_weights_continues_elsewhere_without_training_again(tmp_path):
    """The sitting ends after the calibration; --save-state; the runs folder is gone (a fresh clone);
    --resume-from: the calibration is not trained again, the main study trains, and the report equals
    that of the reproduction run in one sitting (training is deterministic on the CPU)."""
    out = tmp_path / "runs"
    base = ["reproduce", "induction", "--size", "smoke", "--out", str(out), "--quiet"]
    data = f"data.path={tmp_path / 'data'}"
    assert main([*base, data]) == 0
    report = out / "reproduce_induction" / "report" / "induction_results.json"
    whole = json.loads(report.read_text())
    shutil.rmtree(out / "reproduce_induction")  # as if the sitting ended before the main study
    calibration = {p.relative_to(out): p.read_text() for p in out.rglob("summary.json")}
    archive = tmp_path / "state" / "induction.tar.gz"
    assert main([*base, "--save-state", str(archive), data]) == 0
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert not any("ckpt" in n or "tfevents" in n for n in names)
    assert sum(n.endswith("/eval/induction.json") for n in names) == 9  # every run evaluated first
    shutil.rmtree(out)
    assert main([*base, "--resume-from", str(archive), data]) == 0
    for path, text in calibration.items():
        assert (out / path).read_text() == text  # restored, not trained again
    assert len(list((out / "reproduce_induction").glob("trial-*"))) == 3  # the main study trained
    again = json.loads(report.read_text())

    def values(results):
        return sorted(
            (r["group"]["model.arch"], r["seed"], json.dumps(r["evals"], sort_keys=True))
            for r in results["runs"]
        )

    assert values(again) == values(whole) and again["meta"]["chosen"] == whole["meta"]["chosen"]
