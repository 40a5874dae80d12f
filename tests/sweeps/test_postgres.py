"""Sweeps on a real PostgreSQL server (Debian's package), started for these tests on 127.0.0.1 in a
temporary directory: two launcher processes cooperate on one study, and a dead worker's trial is
retried through Optuna's heartbeats. Run with `make test-postgres` (CI does)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from optuna.trial import TrialState

from mosaics_lab.sweeps.study import WORKER_ATTR

from .conftest import (
    load_trials,
    read_ledger,
    run_sweep,
    start_sweep,
    tiny_trial_overrides,
    wait_for,
    write_sweep,
)

pytestmark = pytest.mark.postgres


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.fail(
            "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin): apt-get install postgresql"
        )
    bin_dir = Path(found[-1]).parent
    # The server refuses to run as root: run it as the `postgres` user, in a directory it owns.
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="mosaics-pg-"))
    if as_pg:
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", _free_port()

    def pg(*args: str) -> None:
        subprocess.run([*as_pg, *args], check=True, capture_output=True, text=True, timeout=120)

    pg(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root}"
    pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-o", options, "-w", "start")
    try:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE optuna")
        conn.close()
        yield f"postgresql://postgres@127.0.0.1:{port}/optuna"
    finally:
        pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_two_launchers_on_one_database_run_every_trial_exactly_once(tmp_path, postgres_url, sweep_stories):
    """Real `train` trials: a 2 x 2 grid split between two launcher processes."""
    path = write_sweep(
        tmp_path,
        name="pg_grid",
        sampler={"type": "grid"},
        pruner={"type": "none"},
        overrides=tiny_trial_overrides(sweep_stories),
        grid=[{"train.lr": 0.003}, {"train.lr": 0.01}],
        seeds=[0, 1],
        storage=postgres_url,
    )
    out = tmp_path / "runs"
    procs = [
        subprocess.Popen(
            [os.sys.executable, "-m", "mosaics_lab.cli", "sweep", str(path), "--out", str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    trials = load_trials(out, "pg_grid", storage=postgres_url)
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials), trials
    cells = Counter((t.params["train.lr"], t.params["seed"]) for t in trials)
    assert cells == Counter({(lr, s): 1 for lr in (0.003, 0.01) for s in (0, 1)})
    run_dirs = sorted(p.name for p in (out / "pg_grid").iterdir() if p.name.startswith("trial-"))
    assert run_dirs == [f"trial-{n:04d}" for n in range(4)], "one run dir per trial, none set aside"
    for t in trials:  # each ran the train path once, with its own cell's values
        recipe = (out / "pg_grid" / f"trial-{t.number:04d}" / "recipe.yaml").read_text()
        assert f"seed: {t.params['seed']}\n" in recipe
    assert len({t.user_attrs[WORKER_ATTR] for t in trials}) == 2, "both launchers ran trials"


def test_a_dead_workers_trial_is_retried_through_postgres_heartbeats(tmp_path, postgres_url, ledger):
    path = write_sweep(
        tmp_path,
        name="pg_retry",
        sampler={"type": "grid"},
        pruner={"type": "none"},
        grid=[{"train.lr": 0.001}, {"train.lr": 0.002}],
        overrides={"train.max_steps": 30},
        storage=postgres_url,
        heartbeat_interval=1,
        grace_period=2,
    )
    out = tmp_path / "runs"
    proc = start_sweep(path, out, env={"FAKE_STEP_S": "0.1"})
    wait_for(lambda: any(e["event"] == "start" for e in read_ledger(ledger)), what="a trial to start")
    proc.kill()
    proc.wait()
    assert run_sweep(path, out) == 0
    trials = load_trials(out, "pg_retry", storage=postgres_url)
    assert trials[0].state == TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == trials[0].params
    done = sorted(t.params["train.lr"] for t in trials if t.state == TrialState.COMPLETE)
    assert done == [0.001, 0.002]
