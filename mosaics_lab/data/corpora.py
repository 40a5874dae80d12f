"""Corpora -> token shards: text, JSONL and Parquet readers, the tokenizer, the train/val split and
``prepare_text``."""

from __future__ import annotations

import difflib
import functools
import glob
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mosaics_lab.data import DataError
from mosaics_lab.data.manifest import FORMAT_TOKENS, SPLITS, is_remote, write_manifest
from mosaics_lab.data.shards import (
    auto_chunk_bytes,
    check_out,
    progress_bar,
    staged_output,
    token_dtype,
    write_token_split,
)
from mosaics_lab.data.tokenizers import (
    TOKENIZER_NAMES,
    BPETokenizer,
    ByteTokenizer,
    Tokenizer,
)

# Documents inside a .txt file are separated by this marker when present (the GPT-2 / TinyStories
# convention); otherwise a whole .txt file is one document.
TEXT_DOC_SEPARATOR = "<|endoftext|>"
FILE_FORMATS = {"text": (".txt", ".text", ".md"), "jsonl": (".jsonl", ".ndjson"), "parquet": (".parquet",)}


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


def check_val_fraction(val_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}; e.g. --val-fraction 0.05")


def write_tokens_dataset(
    tmp: Path,
    docs: Callable[[], Iterable[str]],
    num_docs: int,
    tok: Tokenizer,
    val_fraction: float,
    seed: int,
    chunk_bytes: int | None,
    progress: bool = False,
) -> dict[str, Any]:
    """Tokenise ``docs`` into tmp/train and tmp/val shards; returns the manifest's counts and layout.
    progress: a bar over the documents on stderr."""
    dtype = token_dtype(tok.vocab_size)
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
            with progress_bar(num_docs, "tokenizing", "doc", progress) as bar:
                for batch in _batched(docs(), 256):
                    for ids_list in tok.encode_batch(batch):
                        split = "val" if mask[index] else "train"
                        ids = np.concatenate([np.asarray(ids_list, dtype=dtype), eot])
                        ids.tofile(fval if split == "val" else ftrain)
                        counts[split]["tokens"] += len(ids)
                        counts[split]["documents"] += 1
                        index += 1
                    bar.update(len(batch))
            assert index == num_docs, f"documents changed between passes: {num_docs} then {index}"
            split_by = "documents"
    total_bytes = sum(c["tokens"] for c in counts.values()) * np.dtype(dtype).itemsize
    chunk_bytes = chunk_bytes or auto_chunk_bytes(total_bytes)
    for split in SPLITS:
        counts[split]["chunks"] = write_token_split(files[split], dtype, tmp / split, chunk_bytes)
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
    progress: bool = False,
) -> Path:
    """Tokenise .txt / .jsonl / .parquet files (globs allowed) into ``out``; returns ``out``.

    Each JSONL line / Parquet row (field ``text_key``) is a document; a .txt file is one document, or
    several separated by ``<|endoftext|>``. Documents are split into train/val by a seeded shuffle.
    ``file_format`` forces "text" | "jsonl" | "parquet" instead of reading it from each suffix.
    """
    check_val_fraction(val_fraction)
    if tokenizer not in TOKENIZER_NAMES:
        raise DataError(f"unknown tokenizer {tokenizer!r}; valid: {', '.join(TOKENIZER_NAMES)}")
    files = resolve_inputs(paths)
    for path in files:
        _file_format(path, file_format)
    out = Path(out)
    check_out(out, overwrite)

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
    with staged_output(out, overwrite) as tmp:
        body = write_tokens_dataset(tmp, docs, num_docs, tok, val_fraction, seed, chunk_bytes, progress)
        write_manifest(tmp, body, source)
    return out
