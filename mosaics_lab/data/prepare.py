"""The ``prepare`` subcommand and ``ensure_prepared`` (a recipe's data, built on first use).

The data layer in rooms, each one job, importing only the rooms above it in this list:
- ``manifest``: the prepared dataset's layout and format constants, reading manifests (also remote);
- ``shards``: atomic output directories and litdata shard writing;
- ``corpora``: text / JSONL / Parquet readers, tokenizing, the train/val split, ``prepare_text``;
- ``generators``: the synthetic generators (stories and the ICL tasks, one table), ``prepare_synthetic``;
- this module: the DataConfig entry point and the CLI.

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
import hashlib
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mosaics_lab.data import DataError
from mosaics_lab.data.corpora import prepare_text
from mosaics_lab.data.generators import (
    STORIES_DEFAULTS,
    TASK_DEFAULTS,
    generator_names,
    prepare_synthetic,
    resolve_generator_args,
)
from mosaics_lab.data.manifest import FORMAT_EXAMPLES, FORMAT_TOKENS, SPLITS, is_remote, read_manifest
from mosaics_lab.data.tokenizers import MANIFEST_FILE, TOKENIZER_NAMES

# The entry points of the data layer, gathered here for the CLI and for callers that prepare data:
# each lives in the room of its job (manifest, shards, corpora, generators).
__all__ = [
    "FORMAT_EXAMPLES",
    "FORMAT_TOKENS",
    "STORIES_DEFAULTS",
    "TASK_DEFAULTS",
    "ensure_prepared",
    "generator_names",
    "is_remote",
    "prepare_synthetic",
    "prepare_text",
    "read_manifest",
    "register_cli",
]

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
                    cfg.generate,
                    path,
                    seed=cfg.seed,
                    tokenizer=cfg.tokenizer,
                    progress=sys.stderr.isatty(),  # a bar for a person watching, nothing in logs
                    **dict(cfg.generate_args),
                )
            except DataError:
                if not (path / MANIFEST_FILE).is_file():  # not a lost race with another machine
                    raise
    _check_matches(path, cfg)
    return path


# --- CLI ------------------------------------------------------------------------------------------


def parse_args_list(items: Sequence[str] | None) -> dict[str, Any]:
    """``--arg key=value`` items -> {key: value}, each value read as YAML by OmegaConf, exactly as a
    recipe override is (8 -> int, false -> bool, null -> None, [1, 2] -> list); resolvers refused."""
    from omegaconf import OmegaConf

    from mosaics_lab.config.loader import RecipeError, refuse_resolvers

    for item in items or ():
        key, sep, _ = item.partition("=")
        if not sep or not key.strip() or "." in key:
            raise DataError(f"--arg {item!r} must look like key=value (e.g. --arg num_kv_pairs=8)")
    try:
        cfg = OmegaConf.from_dotlist(list(items or ()))
        refuse_resolvers(cfg, "--arg")
    except RecipeError as exc:
        raise DataError(str(exc)) from exc
    except Exception as exc:  # OmegaConf's grammar errors come in several types
        raise DataError(f"--arg: cannot read {list(items or ())}: {exc}") from exc
    return OmegaConf.to_container(cfg, resolve=False)


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
        progress=not args.quiet,
    )
    print(_summary(out))
    return 0


def _cli_synthetic(args: argparse.Namespace) -> int:
    if args.vocab_size is not None and args.tokenizer != "bpe":
        raise DataError("--vocab-size applies to --tokenizer bpe only")
    gen_args = parse_args_list(args.arg)
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
        progress=not args.quiet,
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
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")


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
