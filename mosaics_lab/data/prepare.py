"""Corpora and synthetic generators -> litdata shards with a manifest, and the ``prepare`` subcommand.

Layout of a prepared dataset directory::

    <out>/manifest.json     format ("tokens" | "examples"), tokenizer, vocab_size, eot_id, counts per split,
                            source (files + sha256, or generator + args + seed), versions
    <out>/train/, <out>/val/   litdata shards (what ``litdata.optimize`` writes): index.json + chunk-*.bin
    <out>/tokenizer.json    the BPE tokenizer, when ``tokenizer="bpe"``

"tokens" shards hold one token stream per split (each document followed by the end-of-text token),
read with ``StreamingDataset(dir, item_loader=TokensLoader(block_size))``. "examples" shards hold
fixed-length synthetic task examples as dicts ``{"input_ids": int32 (L,), "labels": int32 (L,)}``
(labels -100 where there is no target), read with the default item loader.

Shape letters: L = example length, N = number of examples.

Guarantees:
- Deterministic: the same inputs and seed give byte-identical shard files. litdata stamps
  ``index.json`` with the write time (``updated_at``); it is replaced by a hash of the chunk files,
  which litdata only uses to name its cache of remote copies, so a re-prepared dataset still gets a
  fresh cache while identical data keeps an identical index.
- Atomic: everything is written to a temporary sibling directory that is renamed into place at the
  end; a failure removes it, so ``out`` is either absent, the old dataset, or the complete new one.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import errno
import functools
import glob
import hashlib
import io
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mosaics_lab.data import DataError
from mosaics_lab.data.tasks.base import IGNORE_INDEX
from mosaics_lab.data.tokenizers import (
    MANIFEST_FILE,
    TOKENIZER_NAMES,
    BPETokenizer,
    ByteTokenizer,
    Tokenizer,
)

FORMAT_TOKENS = "tokens"
FORMAT_EXAMPLES = "examples"
MANIFEST_VERSION = 1
SPLITS = ("train", "val")
# The tasks package names its validation stream "validation"; the shard directory is "val".
TASK_SPLITS = {"train": "train", "val": "validation"}

# Documents inside a .txt file are separated by this marker when present (the GPT-2 / TinyStories
# convention); otherwise a whole .txt file is one document.
TEXT_DOC_SEPARATOR = "<|endoftext|>"
FILE_FORMATS = {"text": (".txt", ".text", ".md"), "jsonl": (".jsonl", ".ndjson"), "parquet": (".parquet",)}
REMOTE_PREFIXES = ("s3://", "gs://", "gcs://", "az://", "azure://", "abfs://", "hf://", "http://", "https://")

STORIES = "stories"
STORIES_DEFAULTS: dict[str, Any] = {"num_tokens": 2_000_000, "val_fraction": 0.05}
TASK_DEFAULTS: dict[str, Any] = {"num_train": 20_000, "num_val": 500}

# Chunk size: about 16 chunks per corpus, between 1 MB (a small corpus still gives several chunks of
# a useful size) and 64 MB (a large one does not explode into tiny files). TokensLoader never reads a
# block across a chunk boundary, so each chunk drops < block_size tokens: 1 MB of uint16 is 512k
# tokens, a loss under 0.5% even at block_size 2048.
MIN_CHUNK_BYTES = 1 << 20
MAX_CHUNK_BYTES = 64 << 20
ITEMS_PER_CHUNK = 8  # token streams are cut into items of chunk_bytes / 8 so chunks fill evenly


def is_remote(path: str | Path) -> bool:
    return str(path).startswith(REMOTE_PREFIXES)


# --- reading manifests (local or remote) ----------------------------------------------------------


def read_text_file(dataset_dir: str | Path, name: str) -> str:
    """The text of ``dataset_dir/name``; remote directories are read through litdata's downloaders."""
    if is_remote(dataset_dir):
        from litdata.streaming.downloader import get_downloader

        url = str(dataset_dir).rstrip("/")
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, name)
            try:
                get_downloader(url, tmp, []).download_file(f"{url}/{name}", local)
                return Path(local).read_text(encoding="utf-8")
            except Exception as exc:  # each object store raises its own types
                raise DataError(f"cannot read {url}/{name}: {exc}") from exc
    path = Path(dataset_dir) / name
    if not path.is_file():
        raise DataError(f"{path} not found")
    return path.read_text(encoding="utf-8")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of the prepared dataset at ``path`` (a local directory or an s3://... URL)."""
    if not is_remote(path):
        root = Path(path)
        if not root.exists():
            raise DataError(
                f"dataset directory {root} does not exist; create it with `mosaics-lab prepare text FILES... "
                f"--out {root}` (or jsonl / parquet / synthetic), or set data.generate in the recipe"
            )
        if not (root / MANIFEST_FILE).is_file():
            raise DataError(
                f"{root} has no {MANIFEST_FILE}, so it is not a prepared dataset; prepare it with "
                f"`mosaics-lab prepare text FILES... --out {root}` (or jsonl / parquet / synthetic)"
            )
    try:
        manifest = json.loads(read_text_file(path, MANIFEST_FILE))
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}/{MANIFEST_FILE} is not valid JSON ({exc}); prepare the dataset again"
        ) from exc
    if manifest.get("format") not in (FORMAT_TOKENS, FORMAT_EXAMPLES):
        raise DataError(
            f"{path}/{MANIFEST_FILE}: unknown format {manifest.get('format')!r}; prepare the dataset again"
        )
    return manifest


# --- atomic output --------------------------------------------------------------------------------


def _check_out(out: Path, overwrite: bool) -> None:
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
def _staged_output(out: Path, overwrite: bool) -> Iterator[Path]:
    """A fresh sibling directory to write into; renamed onto ``out`` on success, removed on failure."""
    _check_out(out, overwrite)
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


def _token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "int32"


def _auto_chunk_bytes(total_bytes: int) -> int:
    return int(min(MAX_CHUNK_BYTES, max(MIN_CHUNK_BYTES, total_bytes // 16)))


def _token_pieces(token_file: Path, dtype: str, piece: int) -> Iterator[np.ndarray]:
    tokens = np.memmap(token_file, dtype=dtype, mode="r") if token_file.stat().st_size else np.empty(0, dtype)
    for start in range(0, len(tokens), piece):
        yield np.array(tokens[start : start + piece])


def _write_token_split(token_file: Path, dtype: str, split_dir: Path, chunk_bytes: int) -> int:
    piece = max(1, chunk_bytes // np.dtype(dtype).itemsize // ITEMS_PER_CHUNK)
    return write_shards(_token_pieces(token_file, dtype, piece), split_dir, chunk_bytes, tokens=True)


# --- documents ------------------------------------------------------------------------------------


def _file_format(path: Path, forced: str | None) -> str:
    if forced is not None:
        if forced not in FILE_FORMATS:
            raise DataError(f"unknown file format {forced!r}; valid: {', '.join(FILE_FORMATS)}")
        return forced
    name = path.name.lower()
    for fmt, suffixes in FILE_FORMATS.items():
        if name.endswith(suffixes):
            return fmt
    known = ", ".join(s for suffixes in FILE_FORMATS.values() for s in suffixes)
    raise DataError(
        f"{path}: cannot tell the format from the suffix (known: {known}); use `prepare text|jsonl|parquet`"
    )


def resolve_inputs(paths: Sequence[str | Path]) -> list[Path]:
    """Files named by ``paths`` (glob patterns expanded, sorted), each once, in a fixed order."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise DataError("no input files given; pass one or more files or glob patterns")
    files: list[Path] = []
    for p in paths:
        p = str(p)
        if is_remote(p):
            raise DataError(f"{p}: prepare reads local files; download it first")
        if glob.has_magic(p):
            matches = sorted(m for m in glob.glob(p, recursive=True) if os.path.isfile(m))
            if not matches:
                raise DataError(
                    f"glob pattern {p!r} matches no files; check the pattern and the working directory"
                )
            files += [Path(m) for m in matches]
        elif os.path.isdir(p):
            raise DataError(f"{p} is a directory; pass the files in it, e.g. '{p}/*.jsonl'")
        elif not os.path.isfile(p):
            raise DataError(f"input file {p} does not exist")
        else:
            files.append(Path(p))
    return list(dict.fromkeys(files))


def _iter_text(path: Path) -> Iterator[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc}); convert it to UTF-8 first") from exc
    if TEXT_DOC_SEPARATOR not in text:
        yield text
        return
    # "story\n<|endoftext|>\nstory" is the usual layout: the newlines around a separator are not content.
    for doc in text.split(TEXT_DOC_SEPARATOR):
        if doc.strip():
            yield doc.strip("\n")


def _iter_jsonl(path: Path, text_key: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}:{lineno}: not valid JSON ({exc}); each line must be one JSON object"
                ) from exc
            if not isinstance(record, dict) or text_key not in record:
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                near = difflib.get_close_matches(text_key, keys if isinstance(keys, list) else [], n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise DataError(
                    f"{path}:{lineno}: no text key {text_key!r}{hint}; keys: {keys}; pass --text-key KEY "
                    "(text_key=...) naming the field that holds the text"
                )
            text = record[text_key]
            if text is not None and not isinstance(text, str):
                raise DataError(f"{path}:{lineno}: {text_key!r} holds {type(text).__name__}, not text")
            if text:
                yield text


def _iter_parquet(path: Path, text_key: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError variants
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
    columns = pf.schema_arrow.names
    if text_key not in columns:
        near = difflib.get_close_matches(text_key, columns, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise DataError(
            f"{path}: no column {text_key!r}{hint}; columns: {columns}; pass --text-key COLUMN (text_key=...)"
        )
    for batch in pf.iter_batches(columns=[text_key], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if text is not None and not isinstance(text, str):
                raise DataError(f"{path}: column {text_key!r} holds {type(text).__name__}, not text")
            if text:
                yield text


def _iter_documents(files: Sequence[Path], text_key: str, file_format: str | None) -> Iterator[str]:
    for path in files:
        fmt = _file_format(path, file_format)
        if fmt == "text":
            yield from (doc for doc in _iter_text(path) if doc)
        elif fmt == "jsonl":
            yield from _iter_jsonl(path, text_key)
        else:
            yield from _iter_parquet(path, text_key)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(functools.partial(f.read, 1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- the token pipeline shared by text files and stories ------------------------------------------


def _make_tokenizer(name: str, bpe_vocab_size: int, docs: Callable[[], Iterable[str]]) -> Tokenizer:
    if name == "byte":
        return ByteTokenizer()
    if name == "bpe":
        return BPETokenizer.train(docs(), vocab_size=bpe_vocab_size)
    raise DataError(f"unknown tokenizer {name!r}; valid: {', '.join(TOKENIZER_NAMES)}")


def _val_mask(num_docs: int, val_fraction: float, seed: int) -> np.ndarray:
    """Which documents go to val: a seeded shuffle, at least one val and one train document."""
    num_val = min(num_docs - 1, max(1, round(num_docs * val_fraction)))
    mask = np.zeros(num_docs, dtype=bool)
    mask[np.random.default_rng(seed).permutation(num_docs)[:num_val]] = True
    return mask


def _batched(items: Iterable[str], n: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _check_val_fraction(val_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}; e.g. --val-fraction 0.05")


def _write_tokens_dataset(
    tmp: Path,
    docs: Callable[[], Iterable[str]],
    num_docs: int,
    tok: Tokenizer,
    val_fraction: float,
    seed: int,
    chunk_bytes: int | None,
) -> dict[str, Any]:
    """Tokenise ``docs`` into tmp/train and tmp/val shards; returns the manifest's counts and layout."""
    dtype = _token_dtype(tok.vocab_size)
    files = {s: tmp / f".{s}.tokens" for s in SPLITS}
    counts = {s: {"tokens": 0, "documents": 0} for s in SPLITS}
    eot = np.array([tok.eot_id], dtype=dtype)
    with open(files["train"], "wb") as ftrain, open(files["val"], "wb") as fval:
        if num_docs == 1:
            # One document cannot be split by document: its token stream is cut at 1 - val_fraction.
            (text,) = list(docs())
            ids = np.concatenate([np.asarray(tok.encode(text), dtype=dtype), eot])
            if len(ids) < 2:
                raise DataError("the corpus is a single document of less than one token; give it more text")
            cut = min(len(ids) - 1, max(1, round(len(ids) * (1.0 - val_fraction))))
            ids[:cut].tofile(ftrain)
            ids[cut:].tofile(fval)
            counts = {
                "train": {"tokens": cut, "documents": 1},
                "val": {"tokens": len(ids) - cut, "documents": 1},
            }
            split_by = "tokens"
        else:
            mask = _val_mask(num_docs, val_fraction, seed)
            index = 0
            for batch in _batched(docs(), 256):
                for ids_list in tok.encode_batch(batch):
                    split = "val" if mask[index] else "train"
                    ids = np.concatenate([np.asarray(ids_list, dtype=dtype), eot])
                    ids.tofile(fval if split == "val" else ftrain)
                    counts[split]["tokens"] += len(ids)
                    counts[split]["documents"] += 1
                    index += 1
            assert index == num_docs, f"documents changed between passes: {num_docs} then {index}"
            split_by = "documents"
    total_bytes = sum(c["tokens"] for c in counts.values()) * np.dtype(dtype).itemsize
    chunk_bytes = chunk_bytes or _auto_chunk_bytes(total_bytes)
    for split in SPLITS:
        counts[split]["chunks"] = _write_token_split(files[split], dtype, tmp / split, chunk_bytes)
        files[split].unlink()
    tok.save(tmp)
    return {
        "format": FORMAT_TOKENS,
        "tokenizer": tok.describe(),
        "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id,
        "dtype": dtype,
        "splits": counts,
        "split": {"by": split_by, "val_fraction": val_fraction, "seed": seed},
        "chunk_bytes": chunk_bytes,
    }


def _versions() -> dict[str, str]:
    import litdata

    import mosaics_lab

    return {"mosaics_lab": mosaics_lab.__version__, "litdata": litdata.__version__}


def _write_manifest(tmp: Path, body: dict[str, Any], source: dict[str, Any]) -> None:
    manifest = {"manifest_version": MANIFEST_VERSION, **body, "source": source, "versions": _versions()}
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def prepare_text(
    paths: Sequence[str | Path],
    out: str | Path,
    tokenizer: str = "byte",
    bpe_vocab_size: int = 4096,
    val_fraction: float = 0.05,
    seed: int = 0,
    text_key: str = "text",
    overwrite: bool = False,
    *,
    file_format: str | None = None,
    chunk_bytes: int | None = None,
) -> Path:
    """Tokenise .txt / .jsonl / .parquet files (globs allowed) into ``out``; returns ``out``.

    Each JSONL line / Parquet row (field ``text_key``) is a document; a .txt file is one document, or
    several separated by ``<|endoftext|>``. Documents are split into train/val by a seeded shuffle.
    ``file_format`` forces "text" | "jsonl" | "parquet" instead of reading it from each suffix.
    """
    _check_val_fraction(val_fraction)
    if tokenizer not in TOKENIZER_NAMES:
        raise DataError(f"unknown tokenizer {tokenizer!r}; valid: {', '.join(TOKENIZER_NAMES)}")
    files = resolve_inputs(paths)
    for path in files:
        _file_format(path, file_format)
    out = Path(out)
    _check_out(out, overwrite)

    def docs() -> Iterator[str]:
        return _iter_documents(files, text_key, file_format)

    num_docs = sum(1 for _ in docs())  # also validates every file before anything is written
    if num_docs == 0:
        raise DataError(f"empty corpus: no text in {', '.join(map(str, files))} (text key {text_key!r})")
    tok = _make_tokenizer(tokenizer, bpe_vocab_size, docs)
    described = [{"path": str(p), "sha256": _sha256(p), "bytes": p.stat().st_size} for p in files]
    source = {
        "kind": "files",
        "format": sorted({_file_format(p, file_format) for p in files}),
        "text_key": text_key,
        "files": described,
        "sha256": hashlib.sha256("".join(f["sha256"] for f in described).encode()).hexdigest(),
    }
    with _staged_output(out, overwrite) as tmp:
        body = _write_tokens_dataset(tmp, docs, num_docs, tok, val_fraction, seed, chunk_bytes)
        _write_manifest(tmp, body, source)
    return out


# --- synthetic generators -------------------------------------------------------------------------


def _tasks_module() -> Any:
    # Imported lazily: the task generators live in their own package and are optional for text data.
    from mosaics_lab.data import tasks

    return tasks


def generator_names() -> list[str]:
    """``stories`` and every synthetic task name."""
    try:
        return [STORIES, *sorted(_tasks_module().TASKS)]
    except Exception:  # the tasks package failing to import must not hide the stories generator
        return [STORIES]


def _unknown_generator(name: str) -> DataError:
    names = generator_names()
    near = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return DataError(f"unknown generator {name!r}{hint}; valid generators: {', '.join(names)}")


def _jsonable(value: dict[str, Any]) -> dict[str, Any]:
    # As the manifest will hold it (tuples become lists), so a recipe compares equal to a manifest.
    return json.loads(json.dumps(value, sort_keys=True))


def resolve_generator_args(
    generator: str, tokenizer: str = "byte", bpe_vocab_size: int = 4096, **args: Any
) -> dict[str, Any]:
    """The complete arguments of ``generator`` (defaults filled in), as the manifest records them."""
    if generator == STORIES:
        unknown = sorted(set(args) - set(STORIES_DEFAULTS))
        if unknown:
            raise DataError(
                f"unknown argument(s) {unknown} for generator 'stories'; valid: {sorted(STORIES_DEFAULTS)}"
            )
        resolved = _jsonable({**STORIES_DEFAULTS, **args})
        if not isinstance(resolved["num_tokens"], int) or resolved["num_tokens"] < 1:
            raise DataError(f"stories num_tokens must be a positive int, got {resolved['num_tokens']!r}")
        _check_val_fraction(resolved["val_fraction"])
        if tokenizer == "bpe":
            resolved["bpe_vocab_size"] = bpe_vocab_size
        return resolved
    if generator not in generator_names():
        raise _unknown_generator(generator)
    if tokenizer != "byte":
        raise DataError(
            f"generator {generator!r} is a synthetic task with its own vocabulary; use the default "
            f"tokenizer 'byte' (data.tokenizer), got {tokenizer!r}"
        )
    counts = {k: args.pop(k, v) for k, v in TASK_DEFAULTS.items()}
    for key, value in counts.items():
        if not isinstance(value, int) or value < 1:
            raise DataError(f"{generator}: {key} must be a positive int, got {value!r}")
    task = _build_task(generator, args)
    return _jsonable({**dataclasses.asdict(task), **counts})


def _build_task(generator: str, args: dict[str, Any]) -> Any:
    tasks = _tasks_module()
    try:
        return tasks.get_task(generator, **args)
    except (ValueError, TypeError) as exc:
        valid = sorted(TASK_DEFAULTS)
        raise DataError(f"generator {generator!r}: {exc} (example counts: {valid})") from exc


def prepare_synthetic(
    generator: str,
    out: str | Path,
    seed: int = 0,
    tokenizer: str = "byte",
    overwrite: bool = False,
    *,
    bpe_vocab_size: int = 4096,
    chunk_bytes: int | None = None,
    **generator_args: Any,
) -> Path:
    """Generate ``generator``'s data (seeded, deterministic) into ``out``; returns ``out``.

    ``stories``: ``num_tokens`` (default 2_000_000; counted with the chosen tokenizer) and
    ``val_fraction`` (0.05). Any task of ``mosaics_lab.data.tasks``: the task's fields plus
    ``num_train`` / ``num_val`` example counts (defaults 20_000 / 500), written as "examples" shards.
    """
    out = Path(out)
    args = resolve_generator_args(generator, tokenizer, bpe_vocab_size, **generator_args)
    _check_out(out, overwrite)
    source = {"kind": "generator", "generator": generator, "args": args, "seed": seed}
    if generator == STORIES:
        return _prepare_stories(out, args, seed, tokenizer, overwrite, chunk_bytes, source)
    return _prepare_task(out, generator, args, seed, overwrite, chunk_bytes, source)


def _prepare_stories(
    out: Path,
    args: dict[str, Any],
    seed: int,
    tokenizer: str,
    overwrite: bool,
    chunk_bytes: int | None,
    source: dict[str, Any],
) -> Path:
    from mosaics_lab.data.stories import generate_stories

    num_tokens = args["num_tokens"]
    if tokenizer == "bpe":
        # The budget counts BPE tokens, which needs the tokenizer first: train it on a budget's worth of
        # bytes (a prefix of the same stream), then draw stories until the BPE count is reached.
        tok: Tokenizer = BPETokenizer.train(
            generate_stories(num_tokens, seed), vocab_size=args["bpe_vocab_size"]
        )
        stories = list(generate_stories(num_tokens, seed, count_tokens=lambda s: len(tok.encode(s)) + 1))
    else:
        tok = ByteTokenizer()
        stories = list(generate_stories(num_tokens, seed))
    with _staged_output(out, overwrite) as tmp:
        body = _write_tokens_dataset(
            tmp, lambda: stories, len(stories), tok, args["val_fraction"], seed, chunk_bytes
        )
        _write_manifest(tmp, body, source)
    return out


def _draw_examples(task: Any, generator: str, split: str, n: int, seed: int) -> np.ndarray:
    """``n`` examples of ``split`` as an int32 (N, 2, L) array of (input_ids, labels) rows."""
    seq_len, vocab = int(task.seq_len), int(task.vocab_size)
    rows = np.empty((n, 2, seq_len), dtype=np.int32)
    try:
        for i, ex in enumerate(task.examples(TASK_SPLITS[split], n, seed)):
            if ex.input_ids.shape != (seq_len,) or ex.labels.shape != (seq_len,):
                raise DataError(
                    f"task {generator!r} yielded an example of shape {ex.input_ids.shape}, expected "
                    f"({seq_len},) = (task.seq_len,)"
                )
            rows[i, 0], rows[i, 1] = ex.input_ids, ex.labels
    except DataError:
        raise
    except ValueError as exc:  # the task's own validation (a bad seed, ...)
        raise DataError(f"generator {generator!r}: {exc}") from exc
    # A task bug would otherwise surface as an index error deep inside the model's embedding.
    ids, labels = rows[:, 0], rows[:, 1]
    if (
        ids.min() < 0
        or ids.max() >= vocab
        or ((labels != IGNORE_INDEX) & ((labels < 0) | (labels >= vocab))).any()
    ):
        raise DataError(f"task {generator!r} produced token ids outside 0..{vocab - 1} (its vocab_size)")
    return rows


def _prepare_task(
    out: Path,
    generator: str,
    args: dict[str, Any],
    seed: int,
    overwrite: bool,
    chunk_bytes: int | None,
    source: dict[str, Any],
) -> Path:
    task_args = {k: v for k, v in args.items() if k not in TASK_DEFAULTS}
    task = _build_task(generator, task_args)
    seq_len = int(task.seq_len)
    sizes = {"train": args["num_train"], "val": args["num_val"]}
    rows = {split: _draw_examples(task, generator, split, n, seed) for split, n in sizes.items()}
    example_bytes = 2 * seq_len * np.dtype(np.int32).itemsize
    chunk_bytes = chunk_bytes or _auto_chunk_bytes(sum(sizes.values()) * example_bytes)
    with _staged_output(out, overwrite) as tmp:
        counts: dict[str, dict[str, int]] = {}
        for split, split_rows in rows.items():
            items = ({"input_ids": row[0], "labels": row[1]} for row in split_rows)
            counts[split] = {
                "examples": len(split_rows),
                "tokens": len(split_rows) * seq_len,
                "targets": int((split_rows[:, 1] != IGNORE_INDEX).sum()),
                "chunks": write_shards(items, tmp / split, chunk_bytes, tokens=False),
            }
        body = {
            "format": FORMAT_EXAMPLES,
            "tokenizer": None,
            "vocab_size": int(task.vocab_size),
            "eot_id": getattr(task, "eot_id", None),
            "seq_len": seq_len,
            "dtype": "int32",
            "splits": counts,
            "chunk_bytes": chunk_bytes,
        }
        _write_manifest(tmp, body, source)
    return out


# --- the DataConfig entry point -------------------------------------------------------------------


def _lock_path(out: Path) -> Path:
    # One lock per dataset path, outside the data directory (nothing to clean up or git-ignore there);
    # processes on other machines sharing a filesystem are kept safe by the atomic rename instead.
    key = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:16]
    lock_dir = Path(tempfile.gettempdir()) / "mosaics-lab-locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    return lock_dir / f"{key}.lock"


def _check_matches(path: Path, cfg: Any) -> None:
    """A generated dataset must be what the recipe asks for; a stale one is an error, never used silently."""
    manifest = read_manifest(path)
    src = manifest.get("source", {})
    if src.get("kind") != "generator" or not cfg.generate:
        return  # prepared from files: data.generate only says what to build when path is missing
    asked = {
        "generator": cfg.generate,
        "args": resolve_generator_args(cfg.generate, cfg.tokenizer, **dict(cfg.generate_args)),
        "seed": cfg.seed,
    }
    have = {"generator": src.get("generator"), "args": src.get("args"), "seed": src.get("seed")}
    if asked != have:
        diff = {k: (have[k], asked[k]) for k in asked if asked[k] != have[k]}
        raise DataError(
            f"{path} was generated with different settings than the recipe asks for "
            f"(key: (on disk, recipe)): {diff}; point data.path at another directory, match data.generate / "
            "data.generate_args / data.seed, or re-create it with "
            "`mosaics-lab prepare synthetic ... --overwrite`"
        )


def ensure_prepared(cfg: Any) -> Path | str:
    """The dataset directory of ``cfg`` (a ``DataConfig``), generating it first when it is missing.

    Safe to call from several processes at once: one generates (under a file lock), the others wait
    and then read the result. Remote URLs (s3://...) are returned unchanged, unchecked.
    """
    if is_remote(cfg.path):
        return str(cfg.path)
    path = Path(cfg.path)
    if (path / MANIFEST_FILE).is_file():
        _check_matches(path, cfg)
        return path
    if not cfg.generate:
        raise DataError(
            f"data.path {path} is not a prepared dataset (no {MANIFEST_FILE}) and data.generate is null; "
            f"prepare it with `mosaics-lab prepare text FILES... --out {path}` "
            "(or jsonl / parquet / synthetic), "
            "or set data.generate (e.g. stories) to build it on first use"
        )
    from filelock import FileLock

    with FileLock(str(_lock_path(path))):
        if not (path / MANIFEST_FILE).is_file():
            try:
                prepare_synthetic(
                    cfg.generate, path, seed=cfg.seed, tokenizer=cfg.tokenizer, **dict(cfg.generate_args)
                )
            except DataError:
                if not (path / MANIFEST_FILE).is_file():  # not a lost race with another machine
                    raise
    _check_matches(path, cfg)
    return path


# --- CLI ------------------------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """A ``--arg`` value: true/false -> bool, none/null -> None, then int, then float, else the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _parse_args_list(items: Sequence[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DataError(f"--arg {item!r} must look like key=value (e.g. --arg num_kv_pairs=8)")
        out[key.strip()] = parse_value(value)
    return out


def _summary(out: Path) -> str:
    m = read_manifest(out)
    unit = "examples" if m["format"] == FORMAT_EXAMPLES else "documents"
    parts = []
    for split in SPLITS:
        counts = m["splits"][split]
        n = counts[unit]
        parts.append(f"{split} {counts['tokens']:,} tokens ({n:,} {unit if n != 1 else unit[:-1]})")
    tok = m["tokenizer"]["name"] if m.get("tokenizer") else "task ids"
    return f"prepared {out}: {', '.join(parts)}; {tok}, vocab {m['vocab_size']}"


def _cli_files(args: argparse.Namespace) -> int:
    if args.vocab_size is not None and args.tokenizer != "bpe":
        raise DataError("--vocab-size applies to --tokenizer bpe only")
    out = prepare_text(
        args.files,
        args.out,
        tokenizer=args.tokenizer,
        bpe_vocab_size=args.vocab_size or 4096,
        val_fraction=args.val_fraction,
        seed=args.seed,
        text_key=args.text_key,
        overwrite=args.overwrite,
        file_format=args.file_format,
    )
    print(_summary(out))
    return 0


def _cli_synthetic(args: argparse.Namespace) -> int:
    if args.vocab_size is not None and args.tokenizer != "bpe":
        raise DataError("--vocab-size applies to --tokenizer bpe only")
    gen_args = _parse_args_list(args.arg)
    if args.num_tokens is not None:
        gen_args["num_tokens"] = args.num_tokens
    if args.val_fraction is not None:
        gen_args["val_fraction"] = args.val_fraction
    out = prepare_synthetic(
        args.name,
        args.out,
        seed=args.seed,
        tokenizer=args.tokenizer,
        overwrite=args.overwrite,
        bpe_vocab_size=args.vocab_size or 4096,
        **gen_args,
    )
    print(_summary(out))
    return 0


def _add_common(p: argparse.ArgumentParser, val_default: float | None) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="output dataset directory, e.g. data/<name>")
    p.add_argument("--tokenizer", choices=TOKENIZER_NAMES, default="byte", help="byte (default) or bpe")
    p.add_argument(
        "--vocab-size", type=int, default=None, metavar="N", help="BPE vocabulary size (default 4096)"
    )
    p.add_argument(
        "--val-fraction", type=float, default=val_default, metavar="F", help="share of documents for val"
    )
    p.add_argument("--seed", type=int, default=0, metavar="S", help="split / generation seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prepared dataset at --out")


def register_cli(subparsers: Any) -> None:
    """Add ``mosaics-lab prepare text|jsonl|parquet|synthetic ...``."""
    prepare = subparsers.add_parser(
        "prepare",
        help="tokenize text / JSONL / Parquet files or a synthetic generator into litdata shards",
        description="Tokenize a corpus or run a synthetic generator into litdata shards with a manifest.",
    )
    sources = prepare.add_subparsers(dest="source", required=True, metavar="SOURCE")
    usage_tail = (
        "--out DIR [--tokenizer byte|bpe] [--vocab-size N] [--val-fraction F] [--seed S] [--overwrite]"
    )
    for fmt, what in (("text", ".txt files"), ("jsonl", "JSON-lines files"), ("parquet", "Parquet files")):
        key = "" if fmt == "text" else " [--text-key text]"
        p = sources.add_parser(
            fmt, help=f"tokenize {what}", usage=f"mosaics-lab prepare {fmt} FILES...{key} {usage_tail}"
        )
        p.add_argument("files", nargs="+", metavar="FILES", help="files or quoted glob patterns")
        _add_common(p, 0.05)
        if fmt != "text":
            p.add_argument(
                "--text-key", default="text", help="field / column holding the text (default text)"
            )
        p.set_defaults(func=_cli_files, file_format=fmt, text_key="text")
    p = sources.add_parser(
        "synthetic",
        help="generate stories or a synthetic ICL task",
        usage="mosaics-lab prepare synthetic NAME --out DIR [--num-tokens N] [--seed S] "
        "[--arg key=value ...]",
    )
    p.add_argument("name", metavar="NAME", help="stories, or a synthetic task name (e.g. mqar)")
    _add_common(p, None)
    p.add_argument(
        "--num-tokens", type=int, default=None, metavar="N", help="stories: token budget (default 2M)"
    )
    p.add_argument(
        "--arg",
        action="append",
        metavar="key=value",
        help="generator argument (repeatable), e.g. num_kv_pairs=8",
    )
    p.set_defaults(func=_cli_synthetic)
