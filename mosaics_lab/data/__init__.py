"""The data layer: tokenizers, corpora -> litdata shards, synthetic generators, the LightningDataModule.

    from mosaics_lab.data import prepare_text, prepare_synthetic, LMDataModule
    prepare_synthetic("stories", "data/stories", num_tokens=2_000_000)

Names are imported lazily (PEP 562): ``litdata.optimize`` runs its writer in a spawned process that
imports ``mosaics_lab.data.shards``, and importing that must not drag Lightning in with it. The rooms
of the data layer are listed in ``mosaics_lab.data.prepare``.
"""

from __future__ import annotations

import importlib
from typing import Any


class DataError(ValueError):
    """A dataset that cannot be prepared or read as asked; the message says what to change."""


_EXPORTS = {
    "EOT_TOKEN": "tokenizers",
    "Tokenizer": "tokenizers",
    "ByteTokenizer": "tokenizers",
    "BPETokenizer": "tokenizers",
    "load_tokenizer": "tokenizers",
    "generate_stories": "stories",
    "prepare_text": "corpora",
    "prepare_synthetic": "generators",
    "ensure_prepared": "prepare",
    "read_manifest": "manifest",
    "register_cli": "prepare",
    "generator_names": "generators",
    "LMDataModule": "datamodule",
    "dataset_vocab_size": "datamodule",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DataError", *_EXPORTS]
