"""prepare: corpora and generators -> litdata shards; round trips, determinism, atomicity, errors, CLI."""

from __future__ import annotations

import argparse
import dataclasses
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from litdata import StreamingDataset, TokensLoader

from mosaics_lab.config.schema import DataConfig
from mosaics_lab.data import DataError, generators, shards
from mosaics_lab.data import prepare as P
from mosaics_lab.data.stories import generate_stories
from mosaics_lab.data.tokenizers import BPETokenizer, ByteTokenizer, load_tokenizer

SMALL_CHUNK = 4096  # bytes: 2048 uint16 tokens per chunk, so a 20k-token corpus spans several chunks


@pytest.fixture(scope="module")
def docs() -> list[str]:
    return list(generate_stories(num_chars=20_000, seed=11))


def _stream(split_dir: Path, block: int) -> np.ndarray:
    """Everything TokensLoader(block) yields from split_dir, in order, concatenated."""
    ds = StreamingDataset(str(split_dir), item_loader=TokensLoader(block_size=block))
    parts = [np.asarray(ds[i]) for i in range(len(ds))]
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)


def _chunk_dims(split_dir: Path) -> list[int]:
    return [c["dim"] for c in json.loads((split_dir / "index.json").read_text())["chunks"]]


def _split_documents(stream: np.ndarray, tok: ByteTokenizer) -> list[str]:
    assert stream[-1] == tok.eot_id, "every document ends with the end-of-text token"
    cuts = np.flatnonzero(stream == tok.eot_id)
    starts = np.concatenate([[0], cuts[:-1] + 1])
    return [tok.decode(stream[s:e].tolist()) for s, e in zip(starts, cuts)]


def _write_inputs(fmt: str, docs: list[str], root: Path) -> list[str]:
    root.mkdir()
    if fmt == "text":
        # One document per file, plus one file of several documents separated by <|endoftext|>.
        for i, doc in enumerate(docs[:-3]):
            (root / f"doc{i:03d}.txt").write_text(doc, encoding="utf-8")
        (root / "zz_multi.txt").write_text("\n<|endoftext|>\n".join(docs[-3:]) + "\n", encoding="utf-8")
        return [str(root / "*.txt")]
    if fmt == "jsonl":
        half = len(docs) // 2
        for name, part in (("a.jsonl", docs[:half]), ("b.jsonl", docs[half:])):
            lines = [json.dumps({"id": i, "text": d}) for i, d in enumerate(part)]
            (root / name).write_text("\n".join(lines) + "\n\n", encoding="utf-8")
        return [str(root / "a.jsonl"), str(root / "b.jsonl")]
    pq.write_table(
        pa.table({"text": docs, "n": list(range(len(docs)))}), root / "docs.parquet", row_group_size=7
    )
    return [str(root / "docs.parquet")]


@pytest.mark.parametrize("fmt", ["text", "jsonl", "parquet"])
def test_prepare_then_stream_preserves_every_token(fmt, docs, tmp_path):
    inputs = _write_inputs(fmt, docs, tmp_path / "in")
    out = P.prepare_text(inputs, tmp_path / "ds", val_fraction=0.2, seed=3, chunk_bytes=SMALL_CHUNK)
    tok = ByteTokenizer()
    manifest = P.read_manifest(out)
    assert manifest["format"] == "tokens" and manifest["tokenizer"]["name"] == "byte"

    # Block size 1 reads every token: each split is its documents, in corpus order, each + <|eot|>.
    train, val = (_stream(out / s, block=1) for s in ("train", "val"))
    train_docs, val_docs = _split_documents(train, tok), _split_documents(val, tok)
    assert sorted(train_docs + val_docs) == sorted(docs)
    assert train_docs == [d for d in docs if d in set(train_docs)]  # original order kept
    assert len(val_docs) == round(0.2 * len(docs))
    assert manifest["splits"]["train"] == {
        "tokens": len(train),
        "documents": len(train_docs),
        "chunks": len(_chunk_dims(out / "train")),
    }
    assert manifest["splits"]["train"]["chunks"] >= 3

    # A block size that divides neither the corpus nor a chunk: TokensLoader never reads a block across
    # a chunk boundary, so each chunk keeps its first (dim // block) * block tokens and drops the rest.
    block = 37
    expected, offset = [], 0
    for dim in _chunk_dims(out / "train"):
        expected.append(train[offset : offset + (dim // block) * block])
        offset += dim
    assert offset == len(train)
    np.testing.assert_array_equal(_stream(out / "train", block), np.concatenate(expected))


def test_val_documents_are_drawn_by_a_seeded_shuffle(docs, tmp_path):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    tok = ByteTokenizer()
    val_sets = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        out = P.prepare_text([tmp_path / "d.jsonl"], tmp_path / name, val_fraction=0.25, seed=seed)
        val_sets.append(set(_split_documents(_stream(out / "val", 1), tok)))
    assert val_sets[0] == val_sets[1] != val_sets[2]
    n_val = len(val_sets[0])
    # Not a contiguous slice of the corpus (the head or the tail): a shuffle.
    assert val_sets[0] != set(docs[:n_val]) and val_sets[0] != set(docs[-n_val:])


def test_a_single_document_is_split_by_tokens(tmp_path):
    text = " ".join(generate_stories(num_chars=6000, seed=2))
    (tmp_path / "one.txt").write_text(text, encoding="utf-8")
    out = P.prepare_text([tmp_path / "one.txt"], tmp_path / "ds", val_fraction=0.1)
    tok = ByteTokenizer()
    both = np.concatenate([_stream(out / "train", 1), _stream(out / "val", 1)])
    assert both.tolist() == tok.encode(text) + [tok.eot_id]
    manifest = P.read_manifest(out)
    assert manifest["split"]["by"] == "tokens"
    assert manifest["splits"]["val"]["tokens"] == round(0.1 * len(both))


def test_bpe_prepare_saves_a_tokenizer_that_decodes_the_shards(docs, tmp_path):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in docs), encoding="utf-8")
    out = P.prepare_text(
        [tmp_path / "d.jsonl"], tmp_path / "ds", tokenizer="bpe", bpe_vocab_size=320, text_key="body"
    )
    assert (out / "tokenizer.json").is_file()
    tok = load_tokenizer(out)
    assert isinstance(tok, BPETokenizer)
    manifest = P.read_manifest(out)
    assert (manifest["vocab_size"], manifest["eot_id"]) == (tok.vocab_size, tok.eot_id) == (320, 0)
    stream = np.concatenate([_stream(out / "train", 1), _stream(out / "val", 1)])
    decoded = tok.decode(stream.tolist()).split("<|eot|>")
    assert decoded[-1] == "" and sorted(decoded[:-1]) == sorted(docs)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_shards_and_other_seeds_differ(tmp_path):
    a = P.prepare_synthetic("stories", tmp_path / "a", seed=5, num_tokens=50_000)
    b = P.prepare_synthetic("stories", tmp_path / "b", seed=5, num_tokens=50_000)
    c = P.prepare_synthetic("stories", tmp_path / "c", seed=6, num_tokens=50_000)
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert "train/index.json" in fa and "train/chunk-0-0.bin" in fa
    assert fa == fb  # index.json and manifest.json included: nothing time-stamped
    assert fa["train/chunk-0-0.bin"] != fc["train/chunk-0-0.bin"]
    assert (
        json.loads(fa["train/index.json"])["updated_at"] != json.loads(fc["train/index.json"])["updated_at"]
    )


def test_in_process_writer_matches_litdata_optimize_byte_for_byte(tmp_path):
    """write_shards stands in for litdata.optimize (see its docstring); this pins that they agree."""
    from litdata import optimize

    rng = np.random.default_rng(0)
    pieces = [rng.integers(0, 257, size=int(rng.integers(50, 900))).astype(np.uint16) for _ in range(40)]
    shards.write_shards(iter(pieces), tmp_path / "ours", chunk_bytes=SMALL_CHUNK, tokens=True)
    # np.asarray is the identity on an array and pickles by name, so the spawned worker imports nothing
    # of ours; one item per input, as in write_shards.
    optimize(
        fn=np.asarray,
        inputs=pieces,
        output_dir=str(tmp_path / "theirs"),
        chunk_bytes=SMALL_CHUNK,
        item_loader=TokensLoader(),
        num_workers=1,
        reorder_files=False,
        keep_data_ordered=True,
        verbose=False,
    )
    shards.stamp_index(tmp_path / "theirs")
    ours, theirs = _files(tmp_path / "ours"), _files(tmp_path / "theirs")
    assert len(ours) > 3 and ours == theirs


# --- synthetic tasks: the "examples" format -------------------------------------------------------


@dataclasses.dataclass
class FakeTask:
    """The task contract (vocab_size, seq_len, examples(split, n, seed)) at its smallest."""

    vocab_size: int = 20
    seq_len: int = 12

    def examples(self, split: str, n: int, seed: int) -> Iterator[SimpleNamespace]:
        rng = np.random.default_rng([seed, {"train": 0, "validation": 1}[split]])
        for _ in range(n):
            ids = rng.integers(0, self.vocab_size, self.seq_len)
            labels = np.full(self.seq_len, -100)
            labels[-1] = ids[0]  # recall the first token at the end
            yield SimpleNamespace(input_ids=ids.astype(np.int64), labels=labels.astype(np.int64), meta={})


@pytest.fixture
def fake_tasks(monkeypatch):
    def get_task(name, **kwargs):
        if name != "fake":
            raise ValueError(f"unknown task {name!r}")
        return FakeTask(**kwargs)

    registry = SimpleNamespace(TASKS={"fake": FakeTask}, get_task=get_task)
    monkeypatch.setattr(generators, "_tasks_module", lambda: registry)


def _examples(split_dir: Path) -> list[dict]:
    ds = StreamingDataset(str(split_dir))
    return [ds[i] for i in range(len(ds))]


def test_task_examples_round_trip_through_examples_shards(fake_tasks, tmp_path):
    out = P.prepare_synthetic("fake", tmp_path / "ds", seed=4, seq_len=10, num_train=300, num_val=7)
    manifest = P.read_manifest(out)
    assert manifest["format"] == "examples" and manifest["tokenizer"] is None
    assert (manifest["vocab_size"], manifest["seq_len"]) == (20, 10)
    assert manifest["source"] == {
        "kind": "generator",
        "generator": "fake",
        "args": {"vocab_size": 20, "seq_len": 10, "num_train": 300, "num_val": 7},
        "seed": 4,
    }
    for split, task_split, n in (("train", "train", 300), ("val", "validation", 7)):
        got = _examples(out / split)
        want = list(FakeTask(seq_len=10).examples(task_split, n, 4))
        assert len(got) == n == manifest["splits"][split]["examples"]
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g["input_ids"], w.input_ids)
            np.testing.assert_array_equal(g["labels"], w.labels)


def test_unknown_task_field_is_an_error_naming_it(fake_tasks, tmp_path):
    with pytest.raises(DataError, match="fake"):
        P.prepare_synthetic("fake", tmp_path / "ds", seq_length=10)
    assert not (tmp_path / "ds").exists()


def test_real_mqar_task_round_trips(tmp_path):
    from mosaics_lab.data.tasks import get_task

    args = {"vocab_size": 64, "seq_len": 32, "num_kv_pairs": 4}
    out = P.prepare_synthetic("mqar", tmp_path / "mqar", seed=1, num_train=50, num_val=5, **args)
    manifest = P.read_manifest(out)
    assert manifest["source"]["args"]["num_kv_pairs"] == 4 and manifest["seq_len"] == 32
    want = list(get_task("mqar", **args).examples("train", 50, 1))
    got = _examples(out / "train")
    assert all(np.array_equal(g["labels"], w.labels) for g, w in zip(got, want)) and len(got) == 50


# --- errors and atomicity -------------------------------------------------------------------------


def test_missing_input_file_and_empty_glob_are_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        P.prepare_text([tmp_path / "nope.txt"], tmp_path / "ds")
    with pytest.raises(DataError, match="matches no files"):
        P.prepare_text([str(tmp_path / "*.jsonl")], tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_empty_corpus_is_an_error(tmp_path):
    (tmp_path / "e.jsonl").write_text('{"text": ""}\n{"text": null}\n\n')
    (tmp_path / "e.txt").write_text("")
    for name in ("e.jsonl", "e.txt"):
        with pytest.raises(DataError, match="empty corpus"):
            P.prepare_text([tmp_path / name], tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_unknown_text_key_is_an_error_naming_the_keys(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"txt": "hello"}\n')
    with pytest.raises(DataError, match=r"no text key 'text' \(did you mean 'txt'\?\).*--text-key"):
        P.prepare_text([tmp_path / "d.jsonl"], tmp_path / "ds")
    pq.write_table(pa.table({"content": ["a", "b"]}), tmp_path / "d.parquet")
    with pytest.raises(DataError, match=r"no column 'text'.*\['content'\]"):
        P.prepare_text([tmp_path / "d.parquet"], tmp_path / "ds")


def test_unknown_generator_lists_valid_names_and_the_nearest():
    with pytest.raises(DataError, match=r"unknown generator 'storys' \(did you mean 'stories'\?\).*stories"):
        P.prepare_synthetic("storys", "unused")


def test_existing_output_is_refused_without_overwrite_and_replaced_with_it(tmp_path):
    out = P.prepare_synthetic("stories", tmp_path / "ds", seed=0, num_tokens=5_000)
    with pytest.raises(DataError, match="overwrite=True"):
        P.prepare_synthetic("stories", out, seed=1, num_tokens=5_000)
    assert P.read_manifest(out)["source"]["seed"] == 0
    P.prepare_synthetic("stories", out, seed=1, num_tokens=5_000, overwrite=True)
    assert P.read_manifest(out)["source"]["seed"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no staging or old copies left behind


def test_overwrite_never_deletes_a_directory_that_is_not_a_dataset(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("precious")
    with pytest.raises(DataError, match="refusing to delete"):
        P.prepare_synthetic("stories", tmp_path / "notes", num_tokens=1_000, overwrite=True)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "precious"


def test_a_failing_prepare_leaves_no_output_and_keeps_an_old_dataset(tmp_path, monkeypatch):
    real = shards.write_shards
    calls = []

    def fail_on_val(items, split_dir, chunk_bytes, tokens):
        calls.append(split_dir.name)
        if split_dir.name == "val":  # train is already written when this fails
            raise RuntimeError("disk full")
        return real(items, split_dir, chunk_bytes, tokens)

    monkeypatch.setattr(shards, "write_shards", fail_on_val)
    with pytest.raises(RuntimeError, match="disk full"):
        P.prepare_synthetic("stories", tmp_path / "new", num_tokens=5_000)
    assert calls == ["train", "val"]
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(shards, "write_shards", real)
    old = P.prepare_synthetic("stories", tmp_path / "old", seed=0, num_tokens=5_000)
    before = _files(old)
    monkeypatch.setattr(shards, "write_shards", fail_on_val)
    with pytest.raises(RuntimeError):
        P.prepare_synthetic("stories", old, seed=9, num_tokens=5_000, overwrite=True)
    assert _files(old) == before and [p.name for p in tmp_path.iterdir()] == ["old"]


def test_bad_val_fraction_is_an_error(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(DataError, match=r"val_fraction must be in \(0, 1\)"):
        P.prepare_text([tmp_path / "a.txt"], tmp_path / "ds", val_fraction=0.0)


def test_read_manifest_of_a_directory_without_one_says_how_to_prepare(tmp_path):
    with pytest.raises(DataError, match="no manifest.json.*mosaics-lab prepare"):
        P.read_manifest(tmp_path)


# --- ensure_prepared ------------------------------------------------------------------------------


def test_ensure_prepared_without_manifest_and_without_generator_says_how_to_prepare(tmp_path):
    cfg = DataConfig(path=str(tmp_path / "missing"), generate=None)
    with pytest.raises(DataError, match="data.generate is null.*mosaics-lab prepare text"):
        P.ensure_prepared(cfg)


def test_ensure_prepared_generates_once_for_concurrent_callers(tmp_path):
    cfg = DataConfig(path=str(tmp_path / "stories"), generate_args={"num_tokens": 8_000}, seed=2)
    results, errors = [], []

    def call():
        try:
            results.append(P.ensure_prepared(cfg))
        except Exception as exc:  # collected: a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [Path(cfg.path)] * 3
    assert P.read_manifest(cfg.path)["source"]["args"] == {"num_tokens": 8_000, "val_fraction": 0.05}
    assert [p.name for p in tmp_path.iterdir()] == ["stories"]


def test_ensure_prepared_refuses_a_dataset_generated_with_other_settings(tmp_path):
    P.prepare_synthetic("stories", tmp_path / "s", seed=0, num_tokens=5_000)
    same = DataConfig(path=str(tmp_path / "s"), generate_args={"num_tokens": 5_000}, seed=0)
    assert P.ensure_prepared(same) == tmp_path / "s"
    other = DataConfig(path=str(tmp_path / "s"), generate_args={"num_tokens": 9_000}, seed=0)
    with pytest.raises(DataError, match="different settings.*num_tokens"):
        P.ensure_prepared(other)


def test_remote_manifests_are_read_through_litdata_downloaders(tmp_path, monkeypatch):
    local = P.prepare_synthetic("stories", tmp_path / "ds", num_tokens=3_000)
    fetched = []

    class Downloader:  # stands in for the S3 client: serves the local copy
        def download_file(self, remote: str, dest: str) -> None:
            fetched.append(remote)
            Path(dest).write_bytes((local / remote.removeprefix("s3://bucket/ds/")).read_bytes())

    import litdata.streaming.downloader as downloader

    monkeypatch.setattr(downloader, "get_downloader", lambda *args, **kwargs: Downloader())
    assert P.read_manifest("s3://bucket/ds/") == P.read_manifest(local)
    assert fetched == ["s3://bucket/ds/manifest.json"]


def test_ensure_prepared_passes_remote_urls_through_unchecked():
    assert P.ensure_prepared(DataConfig(path="s3://bucket/stories", generate=None)) == "s3://bucket/stories"


# --- CLI ------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mosaics-lab")
    P.register_cli(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_prepares_synthetic_stories_and_prints_a_summary(tmp_path, capsys):
    out = tmp_path / "ds"
    args = _parser().parse_args(
        ["prepare", "synthetic", "stories", "--out", str(out), "--num-tokens", "6000"]
    )
    assert args.func(args) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and str(out) in line and "train" in line and "val" in line
    manifest = P.read_manifest(out)
    assert f"{manifest['splits']['train']['tokens']:,}" in line


def test_cli_parses_file_sources_and_task_arguments(tmp_path):
    parser = _parser()
    args = parser.parse_args(["prepare", "jsonl", "a.jsonl", "b.jsonl", "--out", "d", "--text-key", "body"])
    assert (args.files, args.text_key, args.file_format, args.tokenizer) == (
        ["a.jsonl", "b.jsonl"],
        "body",
        "jsonl",
        "byte",
    )
    args = parser.parse_args(
        ["prepare", "text", "x.txt", "--out", "d", "--tokenizer", "bpe", "--vocab-size", "512"]
    )
    assert (args.tokenizer, args.vocab_size, args.text_key) == ("bpe", 512, "text")
    args = parser.parse_args(
        [
            "prepare",
            "synthetic",
            "mqar",
            "--out",
            "d",
            "--arg",
            "num_kv_pairs=8",
            "--arg",
            "random_non_queries=false",
        ]
    )
    assert P.parse_args_list(args.arg) == {"num_kv_pairs": 8, "random_non_queries": False}
    values = P.parse_args_list(["a=0.5", "b=True", "c=null", "d=abc", "e=[1, 2]"])
    assert values == {"a": 0.5, "b": True, "c": None, "d": "abc", "e": [1, 2]}  # YAML values, as overrides
    with pytest.raises(DataError, match="key=value"):
        P.parse_args_list(["num_kv_pairs"])
    with pytest.raises(DataError, match="resolver"):
        P.parse_args_list(["seq_len=${oc.env:HOME}"])


@pytest.mark.parametrize(
    "source,bar",
    [
        (["synthetic", "stories", "--num-tokens", "20000"], "tokenizing"),
        (["synthetic", "induction", "--arg", "num_train=40", "--arg", "num_val=8"], "induction train"),
    ],
)
def test_prepare_shows_progress_on_stderr_and_quiet_turns_it_off(source, bar, tmp_path, capsys):
    from mosaics_lab.cli import main

    assert main(["prepare", *source, "--out", str(tmp_path / "loud")]) == 0
    err = capsys.readouterr().err
    assert bar in err and "100%" in err, err
    assert main(["prepare", *source, "--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert bar not in captured.err and "prepared" in captured.out


def test_stories_is_a_row_of_the_generator_table_like_every_task():
    from mosaics_lab.data.generators import generators
    from mosaics_lab.data.tasks import TASKS

    table = generators()
    assert list(table) == ["stories", *sorted(TASKS)]
    assert all(
        row.name == name and callable(row.resolve) and callable(row.prepare) for name, row in table.items()
    )
