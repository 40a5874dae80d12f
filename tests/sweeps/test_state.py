"""A reproduction's state without weights (``reproduce --save-state`` / ``--resume-from``): what the
archive keeps and leaves behind, how it is restored, and the mistakes it refuses."""

from __future__ import annotations

import io
import json
import socket
import tarfile
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from mosaics_lab import constants as C
from mosaics_lab.sweeps.reproduce import STUDY_DIR
from mosaics_lab.sweeps.spec import SweepError, load_sweep_spec
from mosaics_lab.sweeps.state import (
    MANIFEST,
    restore_state,
    save_state,
    settle_trials,
    study_dirs,
)
from mosaics_lab.sweeps.study import RUN_DIR_ATTR, WORKER_ATTR
from mosaics_lab.sweeps.workers import worker_id
from tests.conftest import REPO

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _run(folder: Path, n: int, status: str | None, lr: float = 1e-3) -> Path:
    run = folder / f"trial-{n:04d}"
    (run / C.CHECKPOINT_DIR).mkdir(parents=True)
    (run / C.CHECKPOINT_DIR / "last.ckpt").write_bytes(b"weights")
    (run / "events.out.tfevents.1.vm").write_bytes(b"events")
    (run / "train.log").write_text("log\n")
    (run / C.RECIPE_FILE).write_text(yaml.safe_dump({"name": "r", "train": {"lr": lr}}))
    (run / C.METRICS_FILE).write_text(json.dumps({"step": 10, C.VAL_LOSS: 1.0}) + "\n")
    if status is not None:
        (run / C.SUMMARY_FILE).write_text(json.dumps({"status": status, "wall_time_s": 5.0}))
        (run / "eval").mkdir()
        (run / "eval" / "mqar.json").write_text("{}")
        (run / "eval" / "mqar.png").write_bytes(b"png")
    return run


def _study(root: Path, name: str, runs: list[str | None]) -> Path:
    """A study folder: a journal with one finished trial per run (its run dir recorded), and the runs."""
    folder = root / name
    folder.mkdir(parents=True)
    storage = JournalStorage(JournalFileBackend(str(folder / "journal.log")))
    study = optuna.create_study(study_name=name, storage=storage)
    for n, status in enumerate(runs):
        run = _run(folder, n, status)
        trial = study.ask()
        trial.set_user_attr(RUN_DIR_ATTR, str(run))
        study.tell(
            trial,
            1.0 if status == "completed" else None,
            state=None if status == "completed" else TrialState.FAIL,
        )
    return folder


def _members(archive: Path) -> list[str]:
    with tarfile.open(archive, "r:gz") as tar:
        return sorted(tar.getnames())


def test_the_reproductions_folders_are_its_rounds_and_main_studies_only(tmp_path):
    for name in ("rep", "rep-calibrate", "rep-calibrate-2", "rep-r2", "rep2", "rep-other", "x-rep"):
        (tmp_path / name).mkdir()
    assert [p.name for p in study_dirs(tmp_path, "rep")] == [
        "rep",
        "rep-calibrate",
        "rep-calibrate-2",
        "rep-r2",
    ]
    assert study_dirs(tmp_path / "missing", "rep") == []


def test_the_archive_keeps_ended_runs_records_and_no_weights(tmp_path):
    root = tmp_path / "runs"
    _study(root, "rep-calibrate", ["completed", "failed: NonFiniteError", "interrupted"])
    _study(root, "rep", ["completed"])
    archive = tmp_path / "state" / "rep.tar.gz"
    lines = []
    manifest = save_state(root, "rep", archive, {"size": "cpu"}, lines.append)
    names = _members(archive)
    assert MANIFEST in names and "rep/journal.log" in names and "rep-calibrate/journal.log" in names
    for run in ("rep-calibrate/trial-0000", "rep-calibrate/trial-0001", "rep/trial-0000"):
        for f in (C.RECIPE_FILE, C.SUMMARY_FILE, C.METRICS_FILE, "eval/mqar.json"):
            assert f"{run}/{f}" in names
    assert not any("trial-0002" in n for n in names)  # stopped part-way: retrained from step 0
    assert not any(s in n for n in names for s in ("ckpt", "tfevents", "train.log", ".png"))
    assert manifest["studies"]["rep-calibrate"] == {
        "runs": ["trial-0000", "trial-0001"],
        "left_behind": ["trial-0002"],
    }
    assert any("left behind" in line and "trial-0002" in line for line in lines)
    with pytest.raises(SweepError, match="is a folder; give a file name"):
        save_state(root, "rep", tmp_path / "state", {})
    with pytest.raises(SweepError, match="no study of 'other'"):
        save_state(root, "other", tmp_path / "o.tar.gz", {})


def test_restoring_puts_the_studies_back_where_they_are_missing_and_repoints_the_journal(tmp_path):
    root = tmp_path / "runs"
    _study(root, "rep-calibrate", ["completed", "interrupted"])
    _study(root, "rep", ["completed"])
    archive = tmp_path / "rep.tar.gz"
    save_state(root, "rep", archive, {"size": "cpu"}, lambda m: None)

    new = tmp_path / "elsewhere" / "runs"
    (new / "rep").mkdir(parents=True)
    (new / "rep" / "mine.txt").write_text("local")  # a study already here is kept as it is
    lines = []
    assert restore_state(archive, new, "rep", "cpu", lines.append) == ["rep-calibrate"]
    assert (new / "rep" / "mine.txt").is_file() and not (new / "rep" / "journal.log").exists()
    assert any("kept as it is" in line for line in lines)
    run = new / "rep-calibrate" / "trial-0000"
    assert (run / C.METRICS_FILE).is_file() and not (run / C.CHECKPOINT_DIR).exists()
    assert not (new / "rep-calibrate" / "trial-0001").exists()
    assert not [p for p in new.iterdir() if p.name.startswith(".restore")]  # no temp folder left
    storage = JournalStorage(JournalFileBackend(str(new / "rep-calibrate" / "journal.log")))
    trials = optuna.load_study(study_name="rep-calibrate", storage=storage).get_trials()
    assert [t.user_attrs[RUN_DIR_ATTR] for t in trials] == [
        str(new / "rep-calibrate" / f"trial-{n:04d}") for n in (0, 1)
    ]
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL]


def test_restoring_refuses_another_study_size_or_file(tmp_path):
    root = tmp_path / "runs"
    _study(root, "rep", ["completed"])
    archive = tmp_path / "rep.tar.gz"
    save_state(root, "rep", archive, {"size": "cpu"}, lambda m: None)
    with pytest.raises(SweepError, match="state of 'rep', not 'other'"):
        restore_state(archive, tmp_path / "a", "other", "cpu")
    with pytest.raises(SweepError, match="continue it with --size cpu"):
        restore_state(archive, tmp_path / "a", "rep", "gpu")
    with pytest.raises(SweepError, match="no such file"):
        restore_state(tmp_path / "missing.tar.gz", tmp_path / "a", "rep")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[:-200])  # a copy cut short
    with pytest.raises(SweepError, match="cut.tar.gz"):
        restore_state(cut, tmp_path / "b", "rep", "cpu")
    (tmp_path / "junk.tar.gz").write_text("not a tar")
    with pytest.raises(SweepError, match="not a state archive"):
        restore_state(tmp_path / "junk.tar.gz", tmp_path / "a", "rep")


def _crafted(path: Path, manifest: dict | None, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        items = dict(members)
        if manifest is not None:
            items[MANIFEST] = json.dumps(manifest).encode()
        for name, data in items.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_restoring_refuses_an_archive_with_members_outside_its_studies(tmp_path):
    ok = {"version": 1, "study": "rep", "size": "cpu", "out_root": "runs", "studies": {"rep": {"runs": []}}}
    for name in ("../escape.txt", "other/journal.log"):
        bad = _crafted(tmp_path / "bad.tar.gz", ok, {name: b"x"})
        with pytest.raises(SweepError, match="unexpected member"):
            restore_state(bad, tmp_path / "a", "rep")
    assert not (tmp_path / "escape.txt").exists()
    with pytest.raises(SweepError, match="no state.json"):
        restore_state(_crafted(tmp_path / "n.tar.gz", None, {"rep/x": b"x"}), tmp_path / "a", "rep")
    with pytest.raises(SweepError, match="state version 99; this mosaics-lab reads 1"):
        restore_state(_crafted(tmp_path / "v.tar.gz", {**ok, "version": 99}, {}), tmp_path / "a", "rep")


def _running(folder: Path, worker: str) -> None:
    storage = JournalStorage(JournalFileBackend(str(folder / "journal.log")))
    study = optuna.load_study(study_name=folder.name, storage=storage)
    trial = study.ask()
    trial.set_user_attr(WORKER_ATTR, worker)
    trial.set_user_attr(RUN_DIR_ATTR, str(folder / "trial-0009"))


def test_saving_settles_a_dead_launchers_trials_and_refuses_a_live_ones(tmp_path):
    spec = load_sweep_spec(REPO / STUDY_DIR / "induction.yaml")
    folder = _study(tmp_path, "rep", ["completed"])
    _running(folder, f"{socket.gethostname()}:{2**22 + 12345}:1")  # no such process: its launcher died
    settle_trials(folder, spec, lambda m: None)
    storage = JournalStorage(JournalFileBackend(str(folder / "journal.log")))
    states = [t.state for t in optuna.load_study(study_name="rep", storage=storage).get_trials()]
    assert states.count(TrialState.RUNNING) == 0 and TrialState.WAITING in states  # re-enqueued
    _running(folder, worker_id())  # this very process: alive
    with pytest.raises(SweepError, match="still running"):
        settle_trials(folder, spec, lambda m: None)
