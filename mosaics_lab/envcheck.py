"""Environment repair for the install step (``python -m mosaics_lab.envcheck --fix``).

litdata depends on torchvision, and the registry's torchvision is built against a different torch
than the CPU wheel we pin. Such a torchvision fails at import (``operator torchvision::nms does not
exist``), and because torchmetrics imports it when present, it takes ``import lightning`` down with
it. Nothing in mosaics-lab needs torchvision, so a torchvision that cannot be imported is removed.
This module imports nothing heavy itself: every probe runs in a child interpreter.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable, Sequence


def imports_cleanly(module: str, python: str = sys.executable) -> tuple[bool, str]:
    """Try ``import module`` in a fresh interpreter; return (ok, last line of the error)."""
    proc = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True)
    if proc.returncode == 0:
        return True, ""
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    return False, lines[-1] if lines else f"exit code {proc.returncode}"


def is_installed(module: str, python: str = sys.executable) -> bool:
    code = f"import importlib.util, sys; sys.exit(0 if importlib.util.find_spec({module!r}) else 1)"
    return subprocess.run([python, "-c", code], capture_output=True).returncode == 0


def pip_uninstall(package: str, python: str = sys.executable) -> None:
    subprocess.run([python, "-m", "pip", "uninstall", "-y", "-q", package], check=True)


def fix_environment(
    python: str = sys.executable,
    uninstall: Callable[[str, str], None] = pip_uninstall,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Remove a torchvision that fails to import, then check that the stack imports.

    Returns the list of removed packages. Raises RuntimeError when ``lightning`` still cannot be
    imported afterwards, naming the module and its error.
    """
    removed: list[str] = []
    if is_installed("torchvision", python):
        ok, err = imports_cleanly("torchvision", python)
        if not ok:
            log(f"envcheck: torchvision is installed but broken ({err}); removing it (not needed).")
            uninstall("torchvision", python)
            removed.append("torchvision")
    for module in ("torch", "lightning", "litdata", "torchmetrics", "optuna", "omegaconf"):
        ok, err = imports_cleanly(module, python)
        if not ok:
            raise RuntimeError(f"envcheck: `import {module}` fails after the fix: {err}")
    return removed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fix", action="store_true", help="remove a broken torchvision")
    args = parser.parse_args(argv)
    if args.fix:
        try:
            removed = fix_environment()
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"envcheck: environment ok{' (removed: ' + ', '.join(removed) + ')' if removed else ''}")
        return 0
    ok, err = imports_cleanly("lightning")
    print("envcheck: lightning imports" if ok else f"envcheck: lightning fails: {err}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
