"""A reproduction's state without its weights: carry a long study between sittings or machines.

``mosaics-lab reproduce STUDY --save-state FILE.tar.gz`` evaluates every finished run that lacks an
evaluation (so nothing left needs a checkpoint), then writes one compressed archive holding, for every
study of the reproduction (``<study>-calibrate``, ``<study>-calibrate-<k>``, ``<study>``,
``<study>-r<k>``): its Optuna journal, and for every run that ended (completed or failed) its
``recipe.yaml``, ``summary.json``, ``metrics.jsonl`` and ``eval/*.json``. Checkpoints, TensorBoard
event files and logs stay behind, and so do runs that were stopped part-way: the journal has them
re-enqueued, and they train again from step 0 where the archive is restored.

``mosaics-lab reproduce STUDY --resume-from FILE.tar.gz`` puts the studies back under the output
root (a study folder already there is kept, never overwritten) and continues the reproduction: the
launcher skips every trial the journal records as finished, the calibration and the main study's
reuse read the restored runs, and the report is written from them.

Use it where ``runs/`` does not outlive a sitting (a scratch disk, a fresh clone per session); on one
machine with a lasting disk, re-running the command is all a reproduction needs.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mosaics_lab import constants as C
from mosaics_lab.sweeps.spec import SweepError, SweepSpec
from mosaics_lab.sweeps.storage import JOURNAL_FILE

MANIFEST = "state.json"
STATE_VERSION = 1
RUN_FILES = (C.RECIPE_FILE, C.SUMMARY_FILE, C.METRICS_FILE)


def study_dirs(out_root: Path, study: str) -> list[Path]:
    """The study folders of reproduction ``study`` under ``out_root``: its calibration rounds and
    main studies, in name order."""
    pattern = re.compile(rf"^{re.escape(study)}(-calibrate(-\d+)?|-r\d+)?$")
    if not out_root.is_dir():
        return []
    return sorted(p for p in out_root.iterdir() if p.is_dir() and pattern.match(p.name))


def _ended(run_dir: Path) -> bool:
    """A run that trained to its end (completed) or failed on its own (diverged, an error): both are
    part of the record (a failed calibration run counts as tried). A stopped run is not."""
    from mosaics_lab.sweeps.runfiles import read_summary

    status = str(read_summary(run_dir).get("status", ""))
    return status == "completed" or status.startswith("failed")


def settle_trials(folder: Path, spec: SweepSpec, say: Callable[[str], None]) -> None:
    """Fail and re-enqueue the trials left RUNNING in ``folder``'s journal by a launcher that died on
    this host (what the next launcher would do), so the saved journal holds no trial that a restored
    launcher could never take; a trial whose launcher is alive (or ran on another host) is an error."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    from mosaics_lab.sweeps.workers import reap_dead_trials

    journal = folder / JOURNAL_FILE
    if not journal.is_file():
        return
    storage = JournalStorage(JournalFileBackend(str(journal)))
    for summary in storage.get_all_studies():
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        with warnings.catch_warnings():  # Optuna's retry callback is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            reap_dead_trials(study, spec.max_retry, say, spec.objective)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if running:
            numbers = ", ".join(str(t.number) for t in running)
            raise SweepError(
                f"{folder.name}: trial(s) {numbers} still running (a launcher is alive, or ran on another "
                "host); stop it first (Ctrl-C, or kill -TERM its pid) and save again"
            )


def save_state(
    out_root: Path, study: str, target: Path, meta: dict[str, Any], say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Write the archive ``target`` (``.tar.gz``) of every study folder of ``study`` under
    ``out_root``; returns its manifest. The caller evaluates the runs first."""
    folders = study_dirs(out_root, study)
    if not folders:
        raise SweepError(
            f"--save-state: no study of {study!r} under {out_root}/ yet; run the reproduction first"
        )
    manifest: dict[str, Any] = {
        "version": STATE_VERSION,
        "study": study,
        "out_root": str(out_root),
        "saved_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        **meta,
        "studies": {},
    }
    if target.is_dir():
        raise SweepError(
            f"--save-state: {target} is a folder; give a file name, e.g. {target / study}.tar.gz"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        _write_archive(tmp, folders, manifest, say)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(target)  # a half-written archive never takes the name
    return manifest


def _write_archive(
    tmp: Path, folders: list[Path], manifest: dict[str, Any], say: Callable[[str], None]
) -> None:
    with tarfile.open(tmp, "w:gz") as tar:
        for folder in folders:
            journal = folder / JOURNAL_FILE
            if journal.is_file():
                tar.add(journal, arcname=f"{folder.name}/{journal.name}")
            kept, left = [], []
            for run in sorted(folder.glob("trial-*")):
                if not run.is_dir():
                    continue
                if not _ended(run):
                    left.append(run.name)
                    continue
                for name in RUN_FILES:
                    if (run / name).is_file():
                        tar.add(run / name, arcname=f"{folder.name}/{run.name}/{name}")
                for ev in sorted((run / "eval").glob("*.json")):
                    tar.add(ev, arcname=f"{folder.name}/{run.name}/eval/{ev.name}")
                kept.append(run.name)
            manifest["studies"][folder.name] = {"runs": kept, "left_behind": left}
            note = (
                f"; left behind (stopped part-way, retrained from step 0): {', '.join(left)}" if left else ""
            )
            say(f"{folder.name}: {len(kept)} run(s){note}")
        data = json.dumps(manifest, indent=2).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mtime = len(data), int(time.time())
        tar.addfile(info, io.BytesIO(data))


def _rewrite_run_dirs(journal: Path, old_root: str, new_root: str) -> None:
    """Point the journal's ``run_dir`` attributes from the saved output root to the new one."""
    from mosaics_lab.sweeps.study import RUN_DIR_ATTR

    old, new = old_root.rstrip("/") + "/", new_root.rstrip("/") + "/"

    def fix(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: (
                    new + v[len(old) :]
                    if k == RUN_DIR_ATTR and isinstance(v, str) and v.startswith(old)
                    else fix(v)
                )
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [fix(v) for v in node]
        return node

    lines = []
    for line in journal.read_text().splitlines():
        try:
            lines.append(json.dumps(fix(json.loads(line)), separators=(",", ":")))
        except json.JSONDecodeError:
            lines.append(line)  # a line cut by a killed process: Optuna skips it, and so do we
    journal.write_text("\n".join(lines) + ("\n" if lines else ""))


def restore_state(
    source: Path, out_root: Path, study: str, size: str | None = None, say: Callable[[str], None] = print
) -> list[str]:
    """Unpack the archive ``source`` of reproduction ``study`` under ``out_root``; returns the study
    folders restored (those already under ``out_root`` are kept as they are)."""
    if not source.is_file():
        raise SweepError(f"--resume-from: {source}: no such file (write one with --save-state)")
    if not tarfile.is_tarfile(source):
        raise SweepError(f"--resume-from: {source}: not a state archive (not a tar file)")
    try:
        return _restore(source, out_root, study, size, say)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise SweepError(f"--resume-from: {source}: cannot unpack it ({exc}); save it again") from exc


def _restore(
    source: Path, out_root: Path, study: str, size: str | None, say: Callable[[str], None]
) -> list[str]:
    out_root.mkdir(parents=True, exist_ok=True)
    # unpacked beside its destination (a rename, not a copy); a dot folder is never taken for a study
    with (
        tarfile.open(source, "r:*") as tar,
        tempfile.TemporaryDirectory(dir=out_root, prefix=".restore-") as tmp,
    ):
        try:
            member = tar.extractfile(MANIFEST)
            manifest = json.loads(member.read()) if member else None
        except (KeyError, json.JSONDecodeError) as exc:
            raise SweepError(f"--resume-from: {source}: no {MANIFEST} (not written by --save-state)") from exc
        version = (manifest or {}).get("version")
        if version != STATE_VERSION:
            raise SweepError(
                f"--resume-from: {source}: state version {version}; this mosaics-lab reads {STATE_VERSION}"
            )
        if manifest.get("study") != study:
            raise SweepError(
                f"--resume-from: {source} holds the state of {manifest.get('study')!r}, not {study!r}"
            )
        if size is not None and manifest.get("size") not in (None, size):
            raise SweepError(
                f"--resume-from: {source} was saved at --size {manifest.get('size')}; "
                f"continue it with --size {manifest.get('size')}"
            )
        allowed = set(manifest.get("studies", {}))
        for m in tar.getmembers():
            top = m.name.split("/", 1)[0]
            if m.name != MANIFEST and (top not in allowed or not (m.isfile() or m.isdir())):
                raise SweepError(f"--resume-from: {source}: unexpected member {m.name!r}")
        tar.extractall(tmp, filter="data")  # no absolute paths, no `..`, no links out of it
        restored = []
        for name in sorted(allowed):
            dest = out_root / name
            if dest.exists():
                say(f"{name}: already under {out_root}/, kept as it is (not restored)")
                continue
            unpacked = Path(tmp) / name
            if not unpacked.is_dir():
                continue
            journal = unpacked / JOURNAL_FILE
            if journal.is_file() and manifest.get("out_root") != str(out_root):
                _rewrite_run_dirs(journal, str(manifest.get("out_root")), str(out_root))
            shutil.move(str(unpacked), str(dest))
            runs = len(manifest["studies"][name].get("runs", []))
            say(f"{name}: restored {runs} run(s) from {source}")
            restored.append(name)
    return restored
