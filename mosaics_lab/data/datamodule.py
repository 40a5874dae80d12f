"""The LightningDataModule: prepared litdata shards -> batches for next-token prediction.

Every batch is ``{"input_ids": LongTensor (B, T), "labels": LongTensor (B, T)}`` where ``labels[:, t]``
is the target of the prediction made after reading ``input_ids[:, : t + 1]`` (-100: no target).

- "tokens" datasets: ``StreamingDataset(dir, item_loader=TokensLoader(block_size + 1))`` gives blocks
  of T + 1 tokens; inputs are the first T, labels the last T (the same block shifted by one).
- "examples" datasets (synthetic tasks): each item already holds aligned input_ids / labels of the
  task's length L <= block_size, so T = L.

The loaders are litdata ``StreamingDataLoader`` objects, returned as they are: Lightning stores their
``state_dict`` in checkpoints, so a resumed run continues mid-epoch on the same samples. Each new
epoch reshuffles with ``seed`` and the epoch number, so runs longer than one pass over the data are
deterministic too.

Shape letters: B = micro batch size, T = sequence length (block_size, or L for task examples).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from mosaics_lab.config.schema import DataConfig
from mosaics_lab.data import DataError
from mosaics_lab.data.manifest import FORMAT_EXAMPLES, FORMAT_TOKENS, SPLITS, is_remote, read_manifest
from mosaics_lab.data.prepare import ensure_prepared


def _stack_long(items: Sequence[Any]) -> torch.Tensor:
    # Shards store uint16 / int32 to halve the bytes; the model and the loss want int64.
    return torch.from_numpy(np.stack([np.asarray(item) for item in items]).astype(np.int64))


def collate_blocks(blocks: Sequence[Any]) -> dict[str, torch.Tensor]:
    """Blocks of T + 1 tokens -> input_ids (B, T) and labels (B, T), the same tokens shifted by one."""
    x = _stack_long(blocks)  # (B, T + 1)
    return {"input_ids": x[:, :-1].contiguous(), "labels": x[:, 1:].contiguous()}


def collate_examples(examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Task examples -> input_ids (B, L) and labels (B, L), already aligned by the task."""
    return {
        "input_ids": _stack_long([ex["input_ids"] for ex in examples]),
        "labels": _stack_long([ex["labels"] for ex in examples]),
    }


def check_shards_present(path: Path) -> None:
    """Every chunk file a split's index lists is on disk; otherwise a DataError naming them (litdata
    would wait for a missing chunk and time out, calling it "not a missing object")."""
    for split in SPLITS:
        index_file = path / split / "index.json"
        if not index_file.is_file():
            raise DataError(f"{path} has no {split}/index.json: the dataset is incomplete; prepare it again")
        chunks = json.loads(index_file.read_text()).get("chunks", [])
        missing = [c["filename"] for c in chunks if not (path / split / c["filename"]).is_file()]
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise DataError(
                f"{path}/{split} is missing {len(missing)} of its {len(chunks)} shard files ({shown}); "
                "prepare the dataset again (mosaics-lab prepare ... --overwrite, or delete the directory "
                "so that data.generate rebuilds it)"
            )


def dataset_vocab_size(cfg: DataConfig) -> int:
    """The vocabulary size of ``cfg``'s dataset (preparing it first if needed), before any Trainer runs."""
    return int(read_manifest(ensure_prepared(cfg))["vocab_size"])


def _split_url(path: Path | str, split: str) -> str:
    return f"{str(path).rstrip('/')}/{split}" if is_remote(path) else str(Path(path) / split)


class LMDataModule(L.LightningDataModule):
    """Streams a prepared dataset (``DataConfig.path``) as next-token prediction batches."""

    def __init__(self, cfg: DataConfig, block_size: int, micro_batch_size: int, seed: int) -> None:
        super().__init__()
        if block_size < 1 or micro_batch_size < 1:
            raise DataError(
                f"block_size and micro_batch_size must be >= 1, got {block_size} and {micro_batch_size}"
            )
        self.cfg = cfg
        self.block_size = block_size
        self.micro_batch_size = micro_batch_size
        self.seed = seed
        self.path: Path | str = cfg.path
        self.manifest: dict[str, Any] | None = None
        self.vocab_size: int | None = None
        self.eot_id: int | None = None

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node (local rank 0) before setup() on every rank.
        ensure_prepared(self.cfg)

    def setup(self, stage: str | None = None) -> None:
        self.path = self.cfg.path if is_remote(self.cfg.path) else Path(self.cfg.path)
        self.manifest = read_manifest(self.path)
        self.vocab_size = int(self.manifest["vocab_size"])
        self.eot_id = self.manifest.get("eot_id")
        if self.cfg.document_mask and self.eot_id is None:
            raise DataError(
                f"data.document_mask: true needs documents ended by <|eot|>, but the tokenizer of "
                f"{self.path} has no <|eot|> (its manifest has no eot_id); set data.document_mask: false "
                "or prepare the data with a tokenizer that has one (byte or bpe)"
            )
        if not is_remote(self.path):
            check_shards_present(Path(self.path))
        if self.manifest["format"] == FORMAT_EXAMPLES and self.manifest["seq_len"] > self.block_size:
            raise DataError(
                f"{self.path} holds task examples of length {self.manifest['seq_len']}, longer than "
                f"model.block_size={self.block_size}; raise model.block_size to at least "
                f"{self.manifest['seq_len']} or prepare the task with a smaller seq_len"
            )

    @property
    def format(self) -> str:
        if self.manifest is None:
            raise RuntimeError("LMDataModule.setup() must run before the dataloaders are built")
        return self.manifest["format"]

    def _dataset(self, split: str, shuffle: bool, drop_last: bool | None) -> Any:
        from litdata import StreamingDataset, TokensLoader

        loader = TokensLoader(block_size=self.block_size + 1) if self.format == FORMAT_TOKENS else None
        return StreamingDataset(
            _split_url(self.path, split),
            item_loader=loader,
            shuffle=shuffle,
            seed=self.seed,
            drop_last=drop_last,
        )

    def _loader(self, dataset: Any) -> Any:
        from litdata import StreamingDataLoader

        collate = collate_blocks if self.format == FORMAT_TOKENS else collate_examples
        return StreamingDataLoader(
            dataset, batch_size=self.micro_batch_size, num_workers=self.cfg.num_workers, collate_fn=collate
        )

    def train_dataloader(self) -> Any:
        dataset = self._dataset("train", shuffle=True, drop_last=True)
        if len(dataset) < self.micro_batch_size:
            unit = (
                f"blocks of block_size + 1 = {self.block_size + 1} tokens"
                if self.format == FORMAT_TOKENS
                else "examples"
            )
            raise DataError(
                f"{self.path}/train holds {len(dataset)} {unit} per process, fewer than one batch of "
                f"train.micro_batch_size={self.micro_batch_size}; prepare more data (e.g. "
                "data.generate_args.num_tokens) or lower model.block_size / train.micro_batch_size"
            )
        return self._loader(dataset)

    def val_dataloader(self) -> Any:
        dataset = self._dataset("val", shuffle=False, drop_last=None)
        if len(dataset) == 0:
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(
                f"{self.path}/val holds fewer than block_size + 1 = {self.block_size + 1} tokens per chunk, "
                "so validation has no batches; prepare with a larger val_fraction or lower model.block_size"
            )
        return self._loader(dataset)
