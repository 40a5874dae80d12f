"""Strategy selection, rank detection before the Trainer exists, and recovery of an interrupted
sharded-checkpoint swap; no processes are spawned here."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy

from mosaics_lab.config.schema import DistConfig
from mosaics_lab.training.checkpoint import load_sharded_weights
from mosaics_lab.training.run import _is_rank_zero
from mosaics_lab.training.strategies import (
    AtomicModelParallelStrategy,
    build_strategy,
    is_sharded_checkpoint,
    recover_interrupted_saves,
)


def test_fsdp_is_pure_data_parallel_over_every_process():
    strategy = build_strategy(DistConfig(accelerator="cpu", strategy="fsdp", devices=2, num_nodes=3))
    assert isinstance(strategy, AtomicModelParallelStrategy)
    # ModelParallelStrategy's "auto" would make it the number of nodes (3) and tensor-parallel the rest.
    assert strategy._data_parallel_size == 6 and strategy._tensor_parallel_size == 1
    assert strategy.process_group_backend == "gloo"


def test_ddp_on_cpu_uses_gloo():
    strategy = build_strategy(DistConfig(accelerator="cpu", strategy="ddp", devices=2))
    assert isinstance(strategy, DDPStrategy) and strategy.process_group_backend == "gloo"
    assert build_strategy(DistConfig(accelerator="cpu")) == "auto"


@pytest.mark.parametrize(
    "env, zero",
    [
        ({}, True),
        ({"RANK": "1", "LOCAL_RANK": "0"}, False),  # torchrun, second node
        ({"RANK": "0"}, True),
        ({"SLURM_NTASKS": "8", "SLURM_PROCID": "3"}, False),  # srun task 3
        ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, True),
        ({"LOCAL_RANK": "1"}, False),  # Lightning's launcher, second process
        ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False),  # Lightning's launcher, second node
    ],
)
def test_only_global_rank_zero_writes_run_files(env, zero, monkeypatch):
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert _is_rank_zero() is zero


def _sharded(path, tag: str):
    path.mkdir()
    (path / "meta.pt").write_text(tag)
    (path / "__0_0.distcp").write_text(tag)
    return path


def test_a_swap_cut_between_its_renames_is_undone(tmp_path):
    # Killed after moving the old checkpoint aside and before renaming the new one into place.
    _sharded(tmp_path / ".last.ckpt.old-sharded", "old")
    _sharded(tmp_path / ".last.ckpt.tmp-sharded", "new, maybe incomplete")
    recover_interrupted_saves(tmp_path)
    assert is_sharded_checkpoint(tmp_path / "last.ckpt")
    assert (tmp_path / "last.ckpt" / "meta.pt").read_text() == "old"
    assert not (tmp_path / ".last.ckpt.old-sharded").exists()


def test_a_parked_copy_next_to_its_checkpoint_is_dropped(tmp_path):
    # Killed after the new checkpoint was in place, before the old one was deleted.
    _sharded(tmp_path / "last.ckpt", "new")
    _sharded(tmp_path / ".last.ckpt.old-sharded", "old")
    recover_interrupted_saves(tmp_path)
    assert (tmp_path / "last.ckpt" / "meta.pt").read_text() == "new"
    assert not (tmp_path / ".last.ckpt.old-sharded").exists()


def _checkpoint(step: int) -> dict:
    return {"state_dict": {"w": torch.full((4,), float(step))}, "global_step": step}


def test_a_sharded_save_replaces_the_checkpoint_whole_and_a_failed_one_leaves_it(tmp_path, monkeypatch):
    # One process and no process group: broadcast and barrier are no-ops, DCP writes one shard.
    from lightning.pytorch.strategies import model_parallel

    strategy = AtomicModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1)
    last = tmp_path / "last.ckpt"
    strategy.save_checkpoint(_checkpoint(1), last)
    strategy.save_checkpoint(_checkpoint(2), last)
    assert is_sharded_checkpoint(last) and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert torch.load(last / "meta.pt", weights_only=False)["global_step"] == 2

    def killed_half_way(state, path):
        (path / "__0_0.distcp").write_bytes(b"half a shard")
        raise KeyboardInterrupt

    monkeypatch.setattr(model_parallel, "_distributed_checkpoint_save", killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        strategy.save_checkpoint(_checkpoint(3), last)
    # Lightning's own strategy would have written the half shard into last.ckpt itself.
    saved = load_sharded_weights(last)
    assert saved["global_step"] == 2 and torch.equal(saved["state_dict"]["w"], torch.full((4,), 2.0))
    recover_interrupted_saves(tmp_path)  # what plan_run does before a resume; it then drops .*.tmp*
    assert is_sharded_checkpoint(last)
