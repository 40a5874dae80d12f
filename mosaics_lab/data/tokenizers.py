"""Tokenizers: byte-level (needs nothing) and a byte-level BPE trained locally on the corpus.

Nothing is fetched at run time: the byte tokenizer is fixed, and a BPE tokenizer is trained by
``mosaics-lab prepare ... --tokenizer bpe`` and saved as ``tokenizer.json`` beside the shards.

Both share one end-of-text token, ``<|eot|>``, placed after every document when a corpus is
prepared. Literal ``<|eot|>`` text inside a document is encoded as ordinary text by both, so
``decode(encode(text)) == text`` for every string.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mosaics_lab.data import DataError

EOT_TOKEN = "<|eot|>"
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FILE = "manifest.json"
TOKENIZER_NAMES = ("byte", "bpe")


class Tokenizer(abc.ABC):
    """The interface the data layer and the trainer use; ``name`` is what the manifest records."""

    name: str

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids: 0 .. vocab_size - 1, the end-of-text id included."""

    @property
    @abc.abstractmethod
    def eot_id(self) -> int:
        """Id of the end-of-text token ``<|eot|>`` that separates documents."""

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no end-of-text token is added)."""

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; the end-of-text id decodes to ``<|eot|>``."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def save(self, directory: str | Path) -> Path | None:
        """Write what ``load_tokenizer`` needs beside the shards; None when there is nothing to write."""
        return None

    def describe(self) -> dict[str, Any]:
        """The manifest's ``tokenizer`` record."""
        return {"name": self.name, "vocab_size": self.vocab_size, "eot_id": self.eot_id}


class ByteTokenizer(Tokenizer):
    """Ids 0..255 are the UTF-8 bytes, 256 is ``<|eot|>``: vocab_size 257."""

    name = "byte"

    @property
    def vocab_size(self) -> int:
        return 257

    @property
    def eot_id(self) -> int:
        return 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        # Bytes between end-of-text ids are decoded together, so a multi-byte character survives; a
        # byte sequence cut mid-character (a sampled continuation) decodes with U+FFFD, never raises.
        parts: list[str] = []
        run: list[int] = []
        for i in ids:
            i = int(i)
            if i == self.eot_id:
                parts.append(bytes(run).decode("utf-8", errors="replace") + EOT_TOKEN)
                run = []
            elif 0 <= i < 256:
                run.append(i)
            else:
                raise ValueError(f"byte tokenizer ids are 0..256, got {i}")
        parts.append(bytes(run).decode("utf-8", errors="replace"))
        return "".join(parts)


class BPETokenizer(Tokenizer):
    """A byte-level BPE (the ``tokenizers`` library) with ``<|eot|>`` as its only special token."""

    name = "bpe"

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        # Literal "<|eot|>" in a document is text, as for the byte tokenizer. The flag is not part of
        # tokenizer.json, so it is set here on every construction (trained or loaded).
        self._tok.encode_special_tokens = True
        eot = self._tok.token_to_id(EOT_TOKEN)
        if eot is None:
            raise DataError(
                f"BPE tokenizer has no {EOT_TOKEN} token; re-run `mosaics-lab prepare ... --tokenizer bpe`"
            )
        self._eot = int(eot)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 4096) -> BPETokenizer:
        """Train on ``texts`` (deterministic: the same texts give the same merges)."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        if vocab_size < 258:
            raise DataError(
                f"BPE vocab size must be >= 258 (256 byte symbols + {EOT_TOKEN} + at least one merge), "
                f"got {vocab_size}; pass e.g. --vocab-size 4096"
            )
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT_TOKEN],
            # Every byte is in the alphabet, so any text (unseen characters included) can be encoded.
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def from_file(cls, path: str | Path) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        return cls(HFTokenizer.from_file(str(path)))

    @classmethod
    def from_str(cls, text: str) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        return cls(HFTokenizer.from_str(text))

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size())

    @property
    def eot_id(self) -> int:
        return self._eot

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def to_str(self) -> str:
        return self._tok.to_str()

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / TOKENIZER_FILE
        path.write_text(self._tok.to_str(), encoding="utf-8")
        return path

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "file": TOKENIZER_FILE}


def load_tokenizer(dataset_dir: str | Path) -> Tokenizer:
    """The tokenizer a prepared dataset was made with (read from its manifest)."""
    from mosaics_lab.data.manifest import read_manifest, read_text_file

    manifest = read_manifest(dataset_dir)
    record = manifest.get("tokenizer")
    if record is None:
        raise DataError(
            f"{dataset_dir} holds {manifest.get('format')!r} of a synthetic task; it has no text tokenizer "
            "(its ids are the task's own vocabulary)"
        )
    name = record["name"]
    if name == "byte":
        return ByteTokenizer()
    if name == "bpe":
        return BPETokenizer.from_str(read_text_file(dataset_dir, record.get("file", TOKENIZER_FILE)))
    raise DataError(
        f"{dataset_dir}: manifest names unknown tokenizer {name!r} (known: {', '.join(TOKENIZER_NAMES)})"
    )
