"""Two CPU processes (gloo) under DDP and FSDP2 against one process with the same global batch.

What must match, and why it can: the dataset holds exactly `global_batch_size` = 4 training
sequences, so every optimiser step sees all four whatever the sharding. One process takes them as
2 micro-batches of 2 with gradient accumulation; two processes take one micro-batch of 2 each
(litdata shards the sequences between the ranks). Both compute the gradient of the mean loss over
the same four sequences, so the runs differ only by float32 summation order. A real bug would not
hide in that noise: both ranks reading the same two sequences, a gradient summed instead of
averaged, a shard left out of clipping or of the optimiser all move the gradient norm or the loss
by percents, not by 1e-6.

Compared: the global gradient norm at every step (logged once the gradients are reduced, so it is
the global one on every strategy) and the mean loss over the four sequences of the weights after
the last step (loaded back in this process; under FSDP from the sharded checkpoint directory).
Tolerance `REL_TOL` = 1e-4, relative: the observed differences are ~1e-7 (one reduction-order
rounding per step); Adam's per-coordinate normalisation can amplify them where a gradient
coordinate is near zero, hence the margin. Dropout is 0 and mosaic_v2's long-term delay is fixed
(`ltm_delay_train=[8]`): a random m is drawn once per forward, i.e. twice per step with
accumulation and once per rank without, so random delays would not see the same model.

Lightning's launcher re-runs `sys.argv` for rank 1, so the two-process runs are `mosaics-lab train`
subprocesses; the one-process baselines run in this process.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mosaics_lab import constants as C
from mosaics_lab.config import load_recipe
from mosaics_lab.data import LMDataModule
from mosaics_lab.training.checkpoint import consolidate, load_trained
from mosaics_lab.training.module import lm_loss
from mosaics_lab.training.run import train
from tests.conftest import REPO

pytestmark = pytest.mark.distributed

REL_TOL = 1e-4
BLOCK = 32
STEPS = 4
# Per model: overrides that make one- and two-process runs see the same model (see the module doc).
MODELS = {
    "gpt2_tiny": [],
    "mosaic_v1_tiny": [],
    "mosaic_v2_tiny": ["model.ltm_delay_train=[8]"],
}


@pytest.fixture(scope="module")
def four_sequences(tmp_path_factory) -> Path:
    """A dataset of exactly 4 training blocks of BLOCK + 1 tokens (and 1 validation block)."""
    from mosaics_lab.data.prepare import prepare_text

    root = tmp_path_factory.mktemp("four")
    words = ["the", "cat", "sat", "on", "a", "mat", "while", "an", "old", "dog", "ran", "far", "home"]
    gen = torch.Generator().manual_seed(0)
    text = " ".join(words[i] for i in torch.randint(len(words), (80,), generator=gen).tolist())
    # 199 bytes + end-of-text = 200 tokens; 80 % = 160 train tokens = 4 blocks of 33, 40 val tokens.
    (root / "text.txt").write_text(text[:199])
    out = prepare_text([root / "text.txt"], root / "data", val_fraction=0.2)
    assert json.loads((out / "manifest.json").read_text())["splits"]["train"]["tokens"] // (BLOCK + 1) == 4
    return out


def overrides(data: Path, run_dir: Path, model: str, steps: int = STEPS) -> list[str]:
    return [
        f"data.path={data}",
        "data.generate=null",
        f"log.run_dir={run_dir}",
        f"train.max_steps={steps}",
        "train.global_batch_size=4",
        "train.micro_batch_size=2",
        "train.warmup_steps=2",
        f"model.block_size={BLOCK}",
        "model.dropout=0.0",
        "eval.batches=0",
        "log.every_n_steps=1",
        "log.checkpoint_every_n_steps=2",
        "log.progress_bar=false",
        "dist.accelerator=cpu",
        *MODELS[model],
    ]


def train_one_process(model: str, data: Path, run_dir: Path) -> Path:
    return train(load_recipe(REPO / "recipes" / f"{model}.yaml", overrides(data, run_dir, model)))


def train_two_processes(model: str, strategy: str, data: Path, run_dir: Path, *extra: str) -> Path:
    args = [sys.executable, "-m", "mosaics_lab.cli", "train", str(REPO / "recipes" / f"{model}.yaml")]
    args += [*overrides(data, run_dir, model), "dist.devices=2", f"dist.strategy={strategy}", *extra]
    done = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


def grad_norms(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / C.METRICS_FILE).read_text().splitlines() if line]
    return {r["step"]: r[C.TRAIN_GRAD_NORM] for r in rows if C.TRAIN_GRAD_NORM in r}


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / C.METRICS_FILE).read_text().splitlines() if line]
    return {r["step"]: r[C.TRAIN_LOSS] for r in rows if C.TRAIN_LOSS in r}


@torch.no_grad()
def loss_on_the_four_sequences(checkpoint: Path, data: Path) -> float:
    """Mean next-token loss of the checkpoint's weights (train mode: v2 uses its training delay,
    fixed here) over the whole training set, read in this single process."""
    recipe, model = load_trained(checkpoint)
    dm = LMDataModule(recipe.data, BLOCK, micro_batch_size=4, seed=recipe.seed)
    dm.setup("fit")
    (batch,) = list(dm.train_dataloader())
    assert batch["input_ids"].shape == (4, BLOCK)
    return float(lm_loss(model.train()(batch["input_ids"]), batch["labels"]))


def assert_same_training(run: Path, reference: Path, data: Path) -> None:
    got, want = grad_norms(run), grad_norms(reference)
    assert sorted(got) == sorted(want) == list(range(STEPS))
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=REL_TOL), f"grad norm at step {step}"
    assert loss_on_the_four_sequences(run, data) == pytest.approx(
        loss_on_the_four_sequences(reference, data), rel=REL_TOL
    )


def assert_sharded_checkpoint_resumes_exactly(model: str, fsdp_run: Path, data: Path, tmp: Path) -> None:
    """Resume a copy of the FSDP run from its step-2 sharded checkpoint: steps 2..3 must repeat."""
    last = fsdp_run / C.CHECKPOINT_DIR / C.LAST_CHECKPOINT
    assert (last / "meta.pt").is_file() and list(last.glob("*.distcp")), "not a sharded checkpoint"
    assert not list((fsdp_run / C.CHECKPOINT_DIR).glob(".*")), "temporary checkpoint dirs left behind"
    resumed = tmp / "resumed"
    shutil.copytree(fsdp_run, resumed)
    # Resume takes the newest checkpoint that loads: keep only step 2's (as last.ckpt), and cut the
    # logs back to it as a run killed after step 2 would have them.
    for later in (C.LAST_CHECKPOINT, "step-000004.ckpt"):
        shutil.rmtree(resumed / C.CHECKPOINT_DIR / later)
    (resumed / C.SUMMARY_FILE).unlink()
    shutil.copytree(
        resumed / C.CHECKPOINT_DIR / "step-000002.ckpt", resumed / C.CHECKPOINT_DIR / C.LAST_CHECKPOINT
    )
    train_two_processes(model, "fsdp", data, resumed)
    straight, again = losses(fsdp_run), losses(resumed)
    assert sorted(again) == list(range(STEPS))
    for step in range(2, STEPS):  # same data, weights, optimiser state and schedule from step 2 on
        assert again[step] == pytest.approx(straight[step], rel=1e-6, abs=1e-6), step
        assert grad_norms(resumed)[step] == pytest.approx(grad_norms(fsdp_run)[step], rel=1e-6), step
    assert json.loads((resumed / C.SUMMARY_FILE).read_text())["global_step"] == STEPS


def test_gpt2_ddp_and_fsdp_match_one_process_and_fsdp_resumes_from_shards(four_sequences, tmp_path):
    data = four_sequences
    single = train_one_process("gpt2_tiny", data, tmp_path / "single")
    for strategy in ("ddp", "fsdp"):
        run = train_two_processes("gpt2_tiny", strategy, data, tmp_path / strategy)
        assert_same_training(run, single, data)
    fsdp = tmp_path / "fsdp"
    # One file for evaluation, the same weights as the shards.
    out = consolidate(fsdp / C.CHECKPOINT_DIR / C.LAST_CHECKPOINT, tmp_path / "consolidated.ckpt")
    assert loss_on_the_four_sequences(out, data) == loss_on_the_four_sequences(fsdp, data)
    assert_sharded_checkpoint_resumes_exactly("gpt2_tiny", fsdp, data, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "model, strategy",
    [
        ("mosaic_v1_tiny", "ddp"),
        ("mosaic_v1_tiny", "fsdp"),
        ("mosaic_v2_tiny", "ddp"),
        ("mosaic_v2_tiny", "fsdp"),
    ],
)
def test_mosaic_two_processes_match_one_process(model, strategy, four_sequences, tmp_path):
    single = train_one_process(model, four_sequences, tmp_path / "single")
    run = train_two_processes(model, strategy, four_sequences, tmp_path / strategy)
    assert_same_training(run, single, four_sequences)
    if strategy == "fsdp":
        assert_sharded_checkpoint_resumes_exactly(model, run, four_sequences, tmp_path)


@pytest.mark.slow
def test_fsdp_with_checkpointing_and_compile_matches_one_eager_process(four_sequences, tmp_path):
    # configure_model's full torchtitan order under FSDP2: checkpoint -> compile -> shard per block.
    single = train_one_process("mosaic_v2_tiny", four_sequences, tmp_path / "single")
    extra = ("dist.compile=true", "dist.activation_checkpointing=true")
    run = train_two_processes("mosaic_v2_tiny", "fsdp", four_sequences, tmp_path / "fsdp", *extra)
    assert_same_training(run, single, four_sequences)
