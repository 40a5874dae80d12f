"""LMDataModule: batch layout, determinism, epochs past the end of the data, resumable loaders."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mosaics_lab.config.schema import DataConfig
from mosaics_lab.data import DataError, generators
from mosaics_lab.data import prepare as P
from mosaics_lab.data.datamodule import LMDataModule, dataset_vocab_size

B, T = 4, 32


@pytest.fixture(scope="module")
def stories_cfg(tmp_path_factory) -> DataConfig:
    path = tmp_path_factory.mktemp("dm") / "stories"
    # Small chunks so the stream spans several chunk files; ~190 blocks of T + 1 tokens per epoch.
    P.prepare_synthetic("stories", path, seed=0, num_tokens=6_500, chunk_bytes=4096)
    return DataConfig(path=str(path), generate="stories", generate_args={"num_tokens": 6_500}, seed=0)


def _dm(cfg: DataConfig, seed: int = 0, block_size: int = T, batch: int = B) -> LMDataModule:
    dm = LMDataModule(cfg, block_size=block_size, micro_batch_size=batch, seed=seed)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _take(it: Iterator[dict], n: int) -> list[torch.Tensor]:
    return [next(it)["input_ids"] for _ in range(n)]


def test_batches_are_long_inputs_with_labels_shifted_by_one(stories_cfg):
    dm = _dm(stories_cfg)
    assert dm.vocab_size == 257 and dm.manifest["format"] == "tokens"
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) > 5
    for batch in batches:  # every batch full: drop_last on the train stream
        assert set(batch) == {"input_ids", "labels"}
        assert batch["input_ids"].shape == batch["labels"].shape == (B, T)
        assert batch["input_ids"].dtype == torch.long and batch["input_ids"].is_contiguous()
        torch.testing.assert_close(batch["labels"][:, :-1], batch["input_ids"][:, 1:])
        assert int(batch["input_ids"].max()) < 257
    val = list(dm.val_dataloader())
    assert val and val[0]["input_ids"].shape[1] == T


def test_vocab_size_is_known_before_any_trainer(stories_cfg):
    assert dataset_vocab_size(stories_cfg) == 257


def test_two_fresh_datamodules_with_one_seed_give_identical_batches(stories_cfg):
    a, b, c = (iter(_dm(stories_cfg, seed=s).train_dataloader()) for s in (1, 1, 2))
    first, second, other = _take(a, 6), _take(b, 6), _take(c, 6)
    assert all(torch.equal(x, y) for x, y in zip(first, second))
    assert not all(torch.equal(x, y) for x, y in zip(first, other))


def _blocks(batches: list[torch.Tensor]) -> list[tuple[int, ...]]:
    return sorted(tuple(row.tolist()) for batch in batches for row in batch)


def test_each_epoch_reshuffles_deterministically_past_the_end_of_the_data(stories_cfg):
    loader = _dm(stories_cfg, seed=3).train_dataloader()
    epochs = [[b["input_ids"] for b in loader] for _ in range(3)]
    assert len({len(e) for e in epochs}) == 1
    # The same blocks every epoch, in a new order.
    assert _blocks(epochs[0]) == _blocks(epochs[1]) == _blocks(epochs[2])
    assert not all(torch.equal(x, y) for x, y in zip(epochs[0], epochs[1]))
    # A second run replays the same epoch orders.
    again = _dm(stories_cfg, seed=3).train_dataloader()
    replay = [[b["input_ids"] for b in again] for _ in range(2)]
    assert all(torch.equal(x, y) for x, y in zip(epochs[1], replay[1]))


def test_loader_state_dict_resumes_where_it_stopped(stories_cfg):
    loader = _dm(stories_cfg, seed=5).train_dataloader()
    it = iter(loader)
    _take(it, 3)
    state = loader.state_dict()
    expected = _take(it, 4)

    fresh = _dm(stories_cfg, seed=5).train_dataloader()
    fresh.load_state_dict(state)
    resumed = _take(iter(fresh), 4)
    assert all(torch.equal(x, y) for x, y in zip(expected, resumed))


def test_a_train_split_smaller_than_one_batch_is_an_error(stories_cfg):
    dm = _dm(stories_cfg, block_size=2048, batch=8)
    with pytest.raises(DataError, match="micro_batch_size=8"):
        dm.train_dataloader()


def test_setup_without_a_prepared_dataset_says_how_to_prepare(tmp_path):
    dm = LMDataModule(DataConfig(path=str(tmp_path / "none"), generate=None), T, B, 0)
    with pytest.raises(DataError, match="mosaics-lab prepare"):
        dm.prepare_data()


@dataclasses.dataclass
class CopyTask:
    vocab_size: int = 10
    seq_len: int = 8

    def examples(self, split: str, n: int, seed: int) -> Iterator[SimpleNamespace]:
        rng = np.random.default_rng([seed, len(split)])
        for _ in range(n):
            ids = rng.integers(0, self.vocab_size, self.seq_len)
            yield SimpleNamespace(
                input_ids=ids, labels=np.where(np.arange(self.seq_len) % 2, ids, -100), meta={}
            )


@pytest.fixture
def copy_task_cfg(tmp_path, monkeypatch) -> DataConfig:
    registry = SimpleNamespace(TASKS={"copy": CopyTask}, get_task=lambda name, **kw: CopyTask(**kw))
    monkeypatch.setattr(generators, "_tasks_module", lambda: registry)
    path = tmp_path / "copy"
    P.prepare_synthetic("copy", path, seed=0, num_train=40, num_val=6)
    return DataConfig(path=str(path), generate="copy", generate_args={"num_train": 40, "num_val": 6})


def test_examples_datasets_give_the_same_batch_layout(copy_task_cfg):
    dm = _dm(copy_task_cfg, block_size=16, batch=5)
    assert dm.vocab_size == 10
    batches = list(dm.train_dataloader())
    assert len(batches) == 8
    for batch in batches:
        assert batch["input_ids"].shape == batch["labels"].shape == (5, 8)
        assert batch["labels"].dtype == torch.long
        assert (batch["labels"][:, ::2] == -100).all()
        torch.testing.assert_close(batch["labels"][:, 1::2], batch["input_ids"][:, 1::2])


def test_examples_longer_than_the_block_size_are_an_error_naming_it(copy_task_cfg):
    with pytest.raises(DataError, match="model.block_size=4"):
        _dm(copy_task_cfg, block_size=4, batch=2)


def test_lightning_trains_past_one_epoch_and_checkpoints_the_loader_state(stories_cfg, tmp_path):
    import lightning as L

    class Bigram(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(257, 257)

        def training_step(self, batch: dict, _: int) -> torch.Tensor:
            logits = self.emb(batch["input_ids"])  # (B, T, V)
            return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten())

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = LMDataModule(stories_cfg, block_size=T, micro_batch_size=16, seed=0)
    trainer = L.Trainer(
        max_steps=30,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(Bigram(), datamodule=dm)
    assert trainer.global_step == 30 and trainer.current_epoch >= 2  # ~11 batches per epoch
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert "num_samples_yielded" in repr(ckpt["loops"]["fit_loop"]["state_dict"])


def test_a_deleted_shard_file_is_a_named_error_not_a_litdata_timeout(tmp_path):
    path = tmp_path / "stories"
    P.prepare_synthetic("stories", path, seed=0, num_tokens=6_500, chunk_bytes=4096)
    chunk = sorted((path / "train").glob("chunk-*.bin"))[0]
    chunk.unlink()
    cfg = DataConfig(path=str(path), generate=None)
    with pytest.raises(DataError, match=rf"missing 1 of its \d+ shard files \({chunk.name}\)"):
        _dm(cfg).setup("fit")
