"""One trainer per run directory: an advisory lock held for the life of the run.

``filelock.FileLock`` on ``<run>/.lock`` (``flock``): the kernel drops it when its process dies, however
it dies (SIGKILL, OOM), so a stale lock of a dead process on this host is taken over by simply
acquiring it. The holder also writes ``<run>/.lock.holder`` (host, pid, time), so a refusal names who
holds the run, and so a holder on *another* host is noticed even where ``flock`` does not reach across
machines (some network filesystems): that lock is refused with a message naming the host and the file
to delete once that process is known to be gone. A second trainer on the same run dir (two commands,
an overlapping SLURM requeue) is refused instead of logging every step twice.

Why a library lock and not a hand-written pid file: only the kernel knows reliably that a holder died.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

LOCK_FILE = ".lock"
HOLDER_FILE = ".lock.holder"


class RunLockedError(ValueError):
    """The run directory is in use by another trainer; the message names it."""


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "holder unknown"
    started = holder.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    return f"host {holder.get('host')}, pid {holder.get('pid')}, since {when}"


class RunLock:
    """``with RunLock(run_dir): ...`` holds the run dir; or ``acquire()`` / ``release()``."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.holder_path = self.run_dir / HOLDER_FILE
        self._lock = FileLock(self.run_dir / LOCK_FILE, timeout=0)

    def read_holder(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.holder_path.read_text())
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def acquire(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            raise RunLockedError(
                f"run dir {self.run_dir} is in use by another trainer ({_describe(self.read_holder())}); "
                "wait for it to finish or stop it. Two trainers on one run dir would log every step twice."
            ) from None
        holder = self.read_holder()
        if holder and holder.get("host") != socket.gethostname():
            self._lock.release()
            raise RunLockedError(
                f"run dir {self.run_dir} is held by a trainer on another machine ({_describe(holder)}), "
                f"which this one cannot check. If that process is gone, delete {self.holder_path} and "
                "run again."
            )
        # No holder, or one on this host whose process is gone (we hold the kernel's lock): ours now.
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": round(time.time(), 3)}
        tmp = self.holder_path.with_name(f"{HOLDER_FILE}.tmp{os.getpid()}")
        try:
            tmp.write_text(json.dumps(me) + "\n")
            os.replace(tmp, self.holder_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            self._lock.release()
            raise
        return self

    def release(self) -> None:
        if not self._lock.is_locked:
            return
        holder = self.read_holder()
        if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            self.holder_path.unlink(missing_ok=True)
        self._lock.release()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
