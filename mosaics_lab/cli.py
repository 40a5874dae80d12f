"""The ``mosaics-lab`` command: train | eval | sweep | compare | inspect | prepare | bench | generate.

Each layer registers its own subcommand (``register_cli(subparsers)``); this file only dispatches and
turns the project's user-facing errors (ValueError subclasses that say what to fix) into a message
and a non-zero exit code instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# Subcommand modules, in the order `--help` lists them.
SUBCOMMANDS = (
    "mosaics_lab.training.cli",
    "mosaics_lab.data.prepare",
    "mosaics_lab.evaluation.generate",
    "mosaics_lab.evaluation.cli",
    "mosaics_lab.sweeps.cli",
    "mosaics_lab.sweeps.reproduce",
    "mosaics_lab.analysis.compare",
    "mosaics_lab.analysis.inspect",
    "mosaics_lab.training.consolidate",
    "mosaics_lab.bench.cli",
)

EXIT_USER_ERROR = 2
EXIT_NONFINITE = 3
EXIT_OS_ERROR = 4  # disk full, permission denied, read-only filesystem: the path is named
EXIT_SIGINT = 130  # 128 + SIGINT (a run interrupted by SIGTERM exits 143)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mosaics-lab", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(name).register_cli(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    from mosaics_lab.training.module import NonFiniteError
    from mosaics_lab.training.stopfile import RunInterrupted

    try:
        return int(args.func(args) or 0)
    except NonFiniteError as exc:
        if args.debug:
            raise
        print(f"mosaics-lab: stopped: {exc}", file=sys.stderr)
        return EXIT_NONFINITE
    except RunInterrupted as exc:
        print(f"mosaics-lab: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("mosaics-lab: interrupted", file=sys.stderr)
        return EXIT_SIGINT
    except (ValueError, FileNotFoundError) as exc:
        if args.debug:
            raise
        print(f"mosaics-lab: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:
        # The writers remove their own temp files when a write fails (atomic_write_text,
        # AtomicCheckpointIO); what is left to say is which path, and why.
        if args.debug:
            raise
        print(f"mosaics-lab: error: {os_error_line(exc)}", file=sys.stderr)
        return EXIT_OS_ERROR


def os_error_line(exc: OSError) -> str:
    """``<reason>: <path>`` for a disk or permission error, on one line."""
    text = str(exc).strip()
    reason = exc.strerror or (text.splitlines()[0] if text else type(exc).__name__)
    path = exc.filename or ""
    if exc.filename2:
        path = f"{path} -> {exc.filename2}"
    return f"{reason}: {path}" if path else reason


if __name__ == "__main__":
    sys.exit(main())
