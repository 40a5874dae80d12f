"""Synthetic generators -> shards: one table (``generators()``) whose rows are the stories (token
streams) and each in-context-learning task (fixed-length examples), and ``prepare_synthetic``."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mosaics_lab.data import DataError
from mosaics_lab.data.corpora import check_val_fraction, write_tokens_dataset
from mosaics_lab.data.manifest import FORMAT_EXAMPLES, TASK_SPLITS, write_manifest
from mosaics_lab.data.shards import auto_chunk_bytes, check_out, progress_bar, staged_output, write_shards
from mosaics_lab.data.tasks.base import IGNORE_INDEX
from mosaics_lab.data.tokenizers import (
    BPETokenizer,
    ByteTokenizer,
    Tokenizer,
)

STORIES = "stories"
STORIES_DEFAULTS: dict[str, Any] = {"num_tokens": 2_000_000, "val_fraction": 0.05}
TASK_DEFAULTS: dict[str, Any] = {"num_train": 20_000, "num_val": 500}


# --- the generator table --------------------------------------------------------------------------


@dataclass(frozen=True)
class Generator:
    """One row of the table: how to complete a generator's arguments (defaults filled in, as the
    manifest records them) and how to write its data. ``stories`` is a row like every task."""

    name: str
    resolve: Callable[..., dict[str, Any]]  # (tokenizer, bpe_vocab_size, **args) -> resolved args
    prepare: Callable[..., Path]  # (out, args, seed, tokenizer, overwrite, chunk_bytes, source, progress)


def _tasks_module() -> Any:
    # Imported lazily: the task generators live in their own package and are optional for text data.
    from mosaics_lab.data import tasks

    return tasks


def generators() -> dict[str, Generator]:
    """The table: ``stories`` and every synthetic task of ``mosaics_lab.data.tasks``."""
    table = {STORIES: Generator(STORIES, _resolve_stories, _prepare_stories)}
    try:
        task_names = sorted(_tasks_module().TASKS)
    except Exception:  # the tasks package failing to import must not hide the stories generator
        task_names = []
    for name in task_names:
        table[name] = Generator(
            name, functools.partial(_resolve_task, name), functools.partial(_prepare_task, name)
        )
    return table


def generator_names() -> list[str]:
    """``stories`` and every synthetic task name."""
    return list(generators())


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
    row = generators().get(generator)
    if row is None:
        raise _unknown_generator(generator)
    return row.resolve(tokenizer, bpe_vocab_size, **args)


def _resolve_stories(tokenizer: str, bpe_vocab_size: int, **args: Any) -> dict[str, Any]:
    unknown = sorted(set(args) - set(STORIES_DEFAULTS))
    if unknown:
        raise DataError(
            f"unknown argument(s) {unknown} for generator 'stories'; valid: {sorted(STORIES_DEFAULTS)}"
        )
    resolved = _jsonable({**STORIES_DEFAULTS, **args})
    if not isinstance(resolved["num_tokens"], int) or resolved["num_tokens"] < 1:
        raise DataError(f"stories num_tokens must be a positive int, got {resolved['num_tokens']!r}")
    check_val_fraction(resolved["val_fraction"])
    if tokenizer == "bpe":
        resolved["bpe_vocab_size"] = bpe_vocab_size
    return resolved


def _resolve_task(generator: str, tokenizer: str, bpe_vocab_size: int, **args: Any) -> dict[str, Any]:
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
    progress: bool = False,
    **generator_args: Any,
) -> Path:
    """Generate ``generator``'s data (seeded, deterministic) into ``out``; returns ``out``.

    ``stories``: ``num_tokens`` (default 2_000_000; counted with the chosen tokenizer) and
    ``val_fraction`` (0.05). Any task of ``mosaics_lab.data.tasks``: the task's fields plus
    ``num_train`` / ``num_val`` example counts (defaults 20_000 / 500), written as "examples" shards.
    progress: bars over the documents / examples on stderr.
    """
    out = Path(out)
    args = resolve_generator_args(generator, tokenizer, bpe_vocab_size, **generator_args)
    check_out(out, overwrite)
    source = {"kind": "generator", "generator": generator, "args": args, "seed": seed}
    row = generators()[generator]
    return row.prepare(out, args, seed, tokenizer, overwrite, chunk_bytes, source, progress)


def _prepare_stories(
    out: Path,
    args: dict[str, Any],
    seed: int,
    tokenizer: str,
    overwrite: bool,
    chunk_bytes: int | None,
    source: dict[str, Any],
    progress: bool = False,
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
    with staged_output(out, overwrite) as tmp:
        body = write_tokens_dataset(
            tmp, lambda: stories, len(stories), tok, args["val_fraction"], seed, chunk_bytes, progress
        )
        write_manifest(tmp, body, source)
    return out


def _draw_examples(
    task: Any, generator: str, split: str, n: int, seed: int, progress: bool = False
) -> np.ndarray:
    """``n`` examples of ``split`` as an int32 (N, 2, L) array of (input_ids, labels) rows."""
    seq_len, vocab = int(task.seq_len), int(task.vocab_size)
    rows = np.empty((n, 2, seq_len), dtype=np.int32)
    bar = progress_bar(n, f"{generator} {split}", "example", progress)
    try:
        for i, ex in enumerate(task.examples(TASK_SPLITS[split], n, seed)):
            bar.update()
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
    finally:
        bar.close()
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
    generator: str,
    out: Path,
    args: dict[str, Any],
    seed: int,
    tokenizer: str,
    overwrite: bool,
    chunk_bytes: int | None,
    source: dict[str, Any],
    progress: bool = False,
) -> Path:
    task_args = {k: v for k, v in args.items() if k not in TASK_DEFAULTS}
    task = _build_task(generator, task_args)
    seq_len = int(task.seq_len)
    sizes = {"train": args["num_train"], "val": args["num_val"]}
    rows = {split: _draw_examples(task, generator, split, n, seed, progress) for split, n in sizes.items()}
    example_bytes = 2 * seq_len * np.dtype(np.int32).itemsize
    chunk_bytes = chunk_bytes or auto_chunk_bytes(sum(sizes.values()) * example_bytes)
    with staged_output(out, overwrite) as tmp:
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
        write_manifest(tmp, body, source)
    return out
