"""Writing litdata shards atomically: a temporary sibling directory renamed into place, shards
written by ``litdata.optimize`` in one process, deterministic index files."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mosaics_lab.data import DataError
from mosaics_lab.data.manifest import is_remote
from mosaics_lab.data.tokenizers import (
    MANIFEST_FILE,
)

# Chunk size: about 16 chunks per corpus, between 1 MB (a small corpus still gives several chunks of
# a useful size) and 64 MB (a large one does not explode into tiny files). TokensLoader never reads a
# block across a chunk boundary, so each chunk drops < block_size tokens: 1 MB of uint16 is 512k
# tokens, a loss under 0.5% even at block_size 2048.
MIN_CHUNK_BYTES = 1 << 20
MAX_CHUNK_BYTES = 64 << 20
ITEMS_PER_CHUNK = 8  # token streams are cut into items of chunk_bytes / 8 so chunks fill evenly


# --- atomic output --------------------------------------------------------------------------------


def check_out(out: Path, overwrite: bool) -> None:
    if is_remote(out):
        raise DataError(
            f"prepare writes a local directory, got {out}; prepare locally, then upload the directory"
        )
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; choose a directory path")
    if not out.is_dir() or not any(out.iterdir()):
        return  # absent or empty: nothing to lose
    is_dataset = (out / MANIFEST_FILE).is_file()
    if not overwrite:
        what = "a prepared dataset" if is_dataset else "a non-empty directory"
        raise DataError(
            f"{out} already exists ({what}); pass overwrite=True (CLI: --overwrite) to replace it, "
            "or choose another output directory"
        )
    if not is_dataset:
        # --overwrite replaces datasets, never an arbitrary directory someone pointed --out at.
        raise DataError(
            f"{out} is not empty and has no {MANIFEST_FILE}: refusing to delete it even with overwrite; "
            "choose another output directory or remove it yourself"
        )


@contextlib.contextmanager
def staged_output(out: Path, overwrite: bool) -> Iterator[Path]:
    """A fresh sibling directory to write into; renamed onto ``out`` on success, removed on failure."""
    check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        _commit(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _commit(tmp: Path, out: Path, overwrite: bool) -> None:
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:  # someone else finished first (checked again: another process may have won)
            raise DataError(
                f"{out} appeared while preparing; pass overwrite=True (CLI: --overwrite) to replace it"
            )
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.rename(tmp, out)  # replaces an empty directory atomically on POSIX
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise DataError(f"{out} appeared while preparing; pass overwrite=True to replace it") from exc
        raise


# --- litdata writing ------------------------------------------------------------------------------


_WRITER_ENV = {
    "DATA_OPTIMIZER_GLOBAL_RANK": "0",
    "DATA_OPTIMIZER_NUM_WORKERS": "1",
    "DATA_OPTIMIZER_NUM_NODES": "1",
}


@contextlib.contextmanager
def _single_writer_env() -> Iterator[None]:
    # What litdata.optimize sets in its one worker: without it the writer takes its rank from an
    # initialised torch.distributed group (prepare_data on node 2 would write chunk-8-* files and wait
    # forever for the other ranks' indexes).
    saved = {k: os.environ.get(k) for k in _WRITER_ENV}
    os.environ.update(_WRITER_ENV)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def write_shards(items: Iterable[Any], split_dir: Path, chunk_bytes: int, tokens: bool) -> int:
    """Write ``items`` in order as litdata shards in ``split_dir``; returns the number of chunks.

    This is the writer that ``litdata.optimize`` runs in its worker (``litdata.streaming.Cache``), run
    here in-process. optimize itself did not fit: it starts a spawned worker process per call (2-5 s
    each on a 2-core machine, twice per dataset: 10x the whole write), switches the process-wide
    multiprocessing start method to "spawn", re-imports the caller's ``__main__`` in the worker, and
    (with start_method="fork") left an orphaned worker blocked on a pipe when ``fn`` raised. With one
    worker and ordered inputs it writes exactly what this does: tests/data/test_prepare.py pins
    byte-identical chunk files and index against optimize.
    """
    from litdata import TokensLoader
    from litdata.streaming import Cache

    # redirect_stdout: under the optimize-worker environment the writer prints "Rank 0 inferred the
    # following data format" for every split; that is litdata's log line, not ours to show users.
    with _single_writer_env(), contextlib.redirect_stdout(io.StringIO()):
        cache = Cache(str(split_dir), chunk_bytes=chunk_bytes, item_loader=TokensLoader() if tokens else None)
        for index, item in enumerate(items):
            cache[index] = item
        cache.done()
        cache.merge()
    stamp_index(split_dir)
    return len(json.loads((split_dir / "index.json").read_text())["chunks"])


def stamp_index(split_dir: Path) -> None:
    """Replace the index's write time with a hash of the chunks (see the module docstring)."""
    index_path = split_dir / "index.json"
    index = json.loads(index_path.read_text())
    digest = hashlib.sha256()
    for chunk in index["chunks"]:
        with open(split_dir / chunk["filename"], "rb") as f:
            for block in iter(functools.partial(f.read, 1 << 20), b""):
                digest.update(block)
    index["updated_at"] = digest.hexdigest()[:32]
    # The same serialisation as litdata's writer (json.dump with sorted keys).
    index_path.write_text(json.dumps(index, sort_keys=True))


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "int32"


def auto_chunk_bytes(total_bytes: int) -> int:
    return int(min(MAX_CHUNK_BYTES, max(MIN_CHUNK_BYTES, total_bytes // 16)))


def _token_pieces(token_file: Path, dtype: str, piece: int) -> Iterator[np.ndarray]:
    tokens = np.memmap(token_file, dtype=dtype, mode="r") if token_file.stat().st_size else np.empty(0, dtype)
    for start in range(0, len(tokens), piece):
        yield np.array(tokens[start : start + piece])


def write_token_split(token_file: Path, dtype: str, split_dir: Path, chunk_bytes: int) -> int:
    piece = max(1, chunk_bytes // np.dtype(dtype).itemsize // ITEMS_PER_CHUNK)
    return write_shards(_token_pieces(token_file, dtype, piece), split_dir, chunk_bytes, tokens=True)


def progress_bar(total: int, desc: str, unit: str, enabled: bool) -> Any:
    """A tqdm bar on stderr (disabled: prints nothing), for the long loops of preparing data."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=not enabled, dynamic_ncols=True)
