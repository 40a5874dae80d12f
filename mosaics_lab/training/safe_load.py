"""Loading checkpoint files without running code from them: ``torch.load(weights_only=True)`` only.

A ``.ckpt`` is a pickle, and unpickling with ``weights_only=False`` runs whatever code its author put
inside. Researchers share checkpoints, so every file mosaics-lab loads (resume, ``eval``, ``generate``,
``consolidate``) goes through ``load_checkpoint_file``: torch's weights-only unpickler, which accepts
tensors, plain containers, numbers and strings and refuses any other global. Our checkpoints hold
nothing else (the RNG states are stored as tensors and lists, see ``RunLifecycle.state_dict``; the
recipe as a plain dict), so nothing needs ``torch.serialization.add_safe_globals``.

A file that loads neither way is told apart: *unsafe* (it names a global outside the allow-list:
crafted, or written by other code) or *corrupt* (truncated, not a torch file).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A path that holds no usable checkpoint; the message says what was looked for."""


class UnsafeCheckpointError(CheckpointError):
    """The file needs code to load (a global outside torch's weights-only allow-list): refused."""


class CorruptCheckpointError(CheckpointError):
    """The file is not a readable torch checkpoint (truncated, empty, damaged)."""


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)``, with errors that say which of unsafe / corrupt it was.
    A missing file raises ``FileNotFoundError`` as usual."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found or "Unsupported global" in str(exc):
            what = found.group(1) if found else "a global"
            raise UnsafeCheckpointError(
                f"{path} refused: loading it would run code ({what} is not a tensor or a plain "
                "container). mosaics-lab loads checkpoints with weights_only=True only; a checkpoint "
                "from someone else's code, or crafted, cannot be used. Retrain, or re-save its "
                "weights as plain tensors yourself if you trust its source."
            ) from exc
        raise CorruptCheckpointError(f"{path} is not a readable checkpoint: {_first_line(exc)}") from exc
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise CorruptCheckpointError(f"{path} is not a readable checkpoint: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
