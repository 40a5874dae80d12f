"""A stand-in for ``mosaics-lab train`` with the same contract, for fast tests of the launcher's
machinery (budgets, exactly-once cells, failures, retries, interruption): it takes ``RECIPE key=value
...``, writes ``metrics.jsonl`` lines and ``summary.json`` in ``log.run_dir``, honours ``STOP`` and
stops when its launcher is gone, exactly like a real run, in milliseconds instead of seconds.

Behaviour from real recipe keys (so the sweep validates against the real recipe):
- val/loss(step) = 3 - 0.1 * step + 50 * train.lr * step  (a large lr "diverges");
- train.max_steps steps (default 6), a value every eval.every_n_steps (default 2);
- train.warmup_steps == 13: crashes with a traceback (a deliberately failing trial);
- prints a line per step on stdout and on stderr ("fake train: step N on ..."), like a run's output;
- FAKE_STEP_S (env): seconds per step; FAKE_LEDGER (env): a file that gets one JSON line per start
  (with the recipe it was given) and per end of every execution, to count how often each trial ran.
- resumes like a real run: ``fake.ckpt`` in the run dir holds the last step; a restart continues
  after it and drops the metrics lines logged past it (the ledger's start says ``resumed_from``).
- FAKE_SIGKILL_AT (env): the first execution in a run dir SIGKILLs itself after that step (as the
  OOM killer would); later executions in the same dir do not.
- FAKE_CRASH_AT (env): the first execution in a run dir raises after that step (a bug, exit 1: not
  retried by the launcher); later executions in the same dir do not (the bug was fixed).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf


def ledger(event: str, **fields: object) -> None:
    path = os.environ.get("FAKE_LEDGER")
    if path:
        with open(path, "a") as f:  # O_APPEND: whole small lines from concurrent writers
            f.write(json.dumps({"event": event, "pid": os.getpid(), **fields}) + "\n")


def launcher_gone() -> bool:
    host, _, pid = os.environ.get("MOSAICS_LAB_SWEEP_LAUNCHER", "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    return False


def main(argv: list[str]) -> int:
    overrides = [a for a in argv[1:] if "=" in a]
    cfg = OmegaConf.to_container(OmegaConf.from_dotlist(overrides))
    train, ev, log = cfg.get("train", {}), cfg.get("eval", {}), cfg.get("log", {})
    run_dir = Path(log["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    params = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in overrides if not o.startswith("log.")}
    ckpt = run_dir / "fake.ckpt"
    resumed = json.loads(ckpt.read_text())["step"] if ckpt.exists() else 0
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        kept = [ln for ln in metrics.read_text().splitlines() if ln and json.loads(ln)["step"] <= resumed]
        metrics.write_text("".join(ln + "\n" for ln in kept))
    ledger("start", run_dir=str(run_dir), recipe=argv[1], params=params, resumed_from=resumed)
    kill_at = int(os.environ.get("FAKE_SIGKILL_AT", "0"))
    killed_once = run_dir / "fake.killed"
    crash_at = int(os.environ.get("FAKE_CRASH_AT", "0"))
    crashed_once = run_dir / "fake.crashed"
    lr = float(train.get("lr", 1e-3))
    steps, every = int(train.get("max_steps", 6)), int(ev.get("every_n_steps", 2))
    if int(train.get("warmup_steps", 0)) == 13:
        raise RuntimeError("deliberate crash for the test (train.warmup_steps=13)")
    status = "completed"
    step = resumed
    for step in range(resumed + 1, steps + 1):
        time.sleep(float(os.environ.get("FAKE_STEP_S", "0.02")))
        print(f"fake train: step {step} on stdout", flush=True)  # as a run's per-step output
        print(f"fake train: step {step} on stderr", file=sys.stderr, flush=True)
        if step % every == 0:
            loss = 3.0 - 0.1 * step + 50 * lr * step
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(
                    json.dumps({"step": step, "time": time.time(), "val/loss": loss, "train/loss": loss})
                    + "\n"
                )
        ckpt.write_text(json.dumps({"step": step}))
        if step == kill_at and not killed_once.exists():
            killed_once.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        if step == crash_at and not crashed_once.exists():
            crashed_once.touch()
            raise RuntimeError(f"deliberate crash after step {step} (FAKE_CRASH_AT)")
        stop = run_dir / "STOP"
        if stop.exists():
            status = stop.read_text().strip()
            stop.unlink()
            break
        if launcher_gone():
            status = "stopped: the sweep launcher exited"
            break
    (run_dir / "summary.json").write_text(json.dumps({"status": status, "global_step": step, "metrics": {}}))
    ledger("end", run_dir=str(run_dir), params=params, status=status, step=step)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
