"""What a trial's run leaves on disk, read by the launcher: the objective from ``metrics.jsonl`` (tailed
while the run trains), ``summary.json``, and the error of a failed run from its log."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mosaics_lab import constants as C
from mosaics_lab.sweeps.spec import is_finite

TRIAL_LOG = C.TRIAL_LOG  # the trial's stdout + stderr, in its run dir
EXIT_MEANING = {
    2: "user error (exit 2)",
    3: "stopped on a non-finite loss (exit 3)",
    4: "disk or permission error (exit 4)",
}


class MetricsTail:
    """Reads the complete lines appended to a run's metrics.jsonl since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self.offset:  # rewritten (a resumed run truncates it): read it again
                    self.offset, self.partial = 0, b""
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()  # an incomplete last line waits for the next call
        rows = []
        for line in lines:
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return rows


def objective_value(series: Sequence[tuple[int, float]], which: str, direction: str) -> float | None:
    finite = [v for _, v in series if is_finite(v)]
    if not finite:
        return None
    if which == "final":
        return finite[-1]
    return min(finite) if direction == "minimize" else max(finite)


def error_from_log(path: Path, exit_code: int, max_lines: int = 20) -> tuple[str, str]:
    """(one-line error, last lines of output) of a failed trial."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        text = ""
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    tail = "\n".join(lines[-max_lines:])
    ours = [ln for ln in lines if ln.startswith("mosaics-lab: ")]
    message = ours[-1] if ours else (lines[-1] if lines else "no output")
    if exit_code < 0:
        sig = (
            signal.Signals(-exit_code).name if -exit_code in signal.Signals._value2member_map_ else -exit_code
        )
        hint = " (out of memory?)" if exit_code == -signal.SIGKILL else ""
        message = f"killed by {sig}{hint}; last output: {message}"
    elif exit_code in EXIT_MEANING:
        message = f"{EXIT_MEANING[exit_code]}: {message}"
    else:
        message = f"exit {exit_code}: {message}"
    return message[:2000], tail[-4000:]


def read_summary(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / C.SUMMARY_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def died_of_a_signal(code: int, status: str | None) -> bool:
    """The trial's process was killed (the OOM killer's SIGKILL, a SIGTERM or SIGINT from outside the
    launcher), as opposed to failing by itself: worth resuming. Exit 130 / 143 is a run that saved its
    checkpoint on the signal; a negative code is Popen's "killed by signal N"."""
    if code < 0:
        return True
    return (
        code in (128 + signal.SIGINT, 128 + signal.SIGTERM, 128 + signal.SIGKILL) or status == "interrupted"
    )
