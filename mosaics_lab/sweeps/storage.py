"""Where a study lives: a journal file by default, or a database (SQLAlchemy URL) with heartbeats.

- journal file (default, ``<out>/<study>/journal.log``): no heartbeats; dead workers on this host are
  found from their process ids (``sweeps.workers``).
- a SQLAlchemy URL (``sqlite:///...``, ``postgresql://...``, ``mysql://...``): heartbeats every
  ``heartbeat_interval`` s; any live worker fails a trial whose worker has been silent for
  ``grace_period`` s and ``RetryHeartbeatStaleTrialCallback`` re-enqueues it (up to ``max_retry``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend

from mosaics_lab.sweeps.spec import Sweep, SweepError

JOURNAL_FILE = "journal.log"
STORAGE_ATTEMPTS = 4


def make_storage(sweep: Sweep, out_dir: Path, url: str | None = None) -> BaseStorage:
    """The study's storage: a journal file by default, or any SQLAlchemy URL (with heartbeats)."""
    url = url or sweep.spec.storage
    spec = sweep.spec
    if not url or "://" not in url:
        path = Path(url) if url else out_dir / JOURNAL_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    url = with_installed_driver(url)
    engine_kwargs: dict[str, Any] = (
        {"connect_args": {"timeout": 60}}  # SQLite: wait for the write lock instead of failing
        if url.startswith("sqlite")
        else {"pool_pre_ping": True}  # survive a database restart between trials
    )
    # Launchers started together on a fresh database race to create Optuna's tables; the loser sees
    # a unique-constraint error. The tables exist by then, so trying again succeeds.
    for attempt in range(STORAGE_ATTEMPTS):
        try:
            return RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=spec.heartbeat_interval,
                grace_period=spec.grace_period,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=spec.max_retry),
            )
        except Exception as exc:  # sqlalchemy/driver errors come in many types
            if attempt == STORAGE_ATTEMPTS - 1 or isinstance(exc, (ImportError, ValueError)):
                raise SweepError(
                    f"cannot open storage {storage_label(out_dir, url)}: {str(exc).splitlines()[0]}"
                ) from exc
            time.sleep(1.0 + attempt)
    raise AssertionError("unreachable")


def with_installed_driver(url: str) -> str:
    """``postgresql://`` means psycopg (3) to SQLAlchemy >= 2.1, but the project's extra installs
    psycopg2: name the driver that is installed when the URL names none."""
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if (
        scheme == "postgresql"
        and importlib.util.find_spec("psycopg") is None
        and importlib.util.find_spec("psycopg2") is not None
    ):
        return f"postgresql+psycopg2{sep}{rest}"
    return url


def storage_label(out_dir: Path, url: str | None) -> str:
    """How tables and logs name the storage (a database URL without its password)."""
    if not url:
        return str(out_dir / JOURNAL_FILE)
    if "://" not in url:
        return url
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: RDBStorage will say so
        return url
