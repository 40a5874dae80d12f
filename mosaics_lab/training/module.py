"""The LightningModule: the *system* (loss, metrics, optimiser, schedule) around any *network* from
the model table. It never branches on the architecture name.

Shape letters: B batch, T sequence length, V vocabulary.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.tensor import DTensor

from mosaics_lab import constants as C
from mosaics_lab.config.loader import recipe_to_dict
from mosaics_lab.config.schema import Recipe
from mosaics_lab.data.tasks.base import IGNORE_INDEX
from mosaics_lab.models import build_model
from mosaics_lab.ops import document_ids
from mosaics_lab.training.optim import build_optimizer

RECIPE_KEY = "mosaics_lab_recipe"


class NonFiniteError(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; training stopped on the last good state."""


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross entropy over positions whose label is not IGNORE_INDEX (float32 logits)."""
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)


class LanguageModelModule(L.LightningModule):
    def __init__(self, recipe: Recipe, total_steps: int) -> None:
        super().__init__()
        self.recipe = recipe
        self.total_steps = total_steps
        self.model = build_model(recipe.model)
        self.tokens_per_step = recipe.train.global_batch_size * recipe.model.block_size
        # The <|eot|> id whose positions cut each block into documents, when data.document_mask is
        # on; read from the data module in setup().
        self.eot_id: int | None = None
        self._logging_step_aligned = False
        # The losses of this step's micro-batches (detached), checked for finiteness together with
        # the gradient norm before the optimiser steps: one host sync per step, not one per micro-batch.
        self._step_losses: list[torch.Tensor] = []
        self._compiled = False

    def setup(self, stage: str) -> None:
        if self.recipe.data.document_mask:
            datamodule = self.trainer.datamodule
            eot_id = getattr(datamodule, "eot_id", None)
            if eot_id is None:
                raise ValueError(
                    "data.document_mask: true, but the data has no <|eot|> id to cut documents at; "
                    "set data.document_mask: false or use a dataset prepared with a byte or bpe tokenizer"
                )
            self.eot_id = int(eot_id)

    # ---- model transforms, applied from outside the model (torchtitan order) ----
    def configure_model(self) -> None:
        """Activation checkpointing, then per-block torch.compile, then FSDP2 `fully_shard` per block
        and of the root (torchtitan's order). Idempotent: Lightning may call it more than once.

        The order matters: checkpointing wraps the plain block so the compiled graph includes the
        recomputation boundary; compiling before sharding keeps FSDP's all-gather / reduce-scatter
        hooks outside the compiled region (they run around each compiled block, overlapping with it);
        the root's `fully_shard` takes what no block holds (embeddings, final norm, LM head).
        Parameters stay float32 under FSDP (no MixedPrecisionPolicy): Lightning's bf16 autocast casts
        the matmuls, while the memories' per-head scalars (decays, bandwidths) keep full precision,
        exactly as on one device.
        """
        if self._compiled:
            return
        dist = self.recipe.dist
        blocks: nn.ModuleList = self.model.blocks
        if dist.activation_checkpointing:
            from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

            for i, block in enumerate(blocks):
                blocks[i] = checkpoint_wrapper(block, preserve_rng_state=True)
        if dist.compile:
            for i, block in enumerate(blocks):
                blocks[i] = torch.compile(block)
        if self._trainer is not None and isinstance(self.trainer.strategy, ModelParallelStrategy):
            from torch.distributed.fsdp import fully_shard

            mesh = self.device_mesh["data_parallel"]
            for block in blocks:
                fully_shard(block, mesh=mesh)
            fully_shard(self.model, mesh=mesh)
        self._compiled = True

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx, self.doc_ids(idx))

    def doc_ids(self, idx: torch.Tensor) -> torch.Tensor | None:
        """(B, T) document ids of a block under data.document_mask (the <|eot|> token belongs to the
        document it ends), else None: the model sees one document per row."""
        return None if self.eot_id is None else document_ids(idx, self.eot_id)

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        idx = batch["input_ids"]
        logits = self.model(idx, self.doc_ids(idx))  # (B, T, V)
        return lm_loss(logits, batch["labels"])

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Per-step randomness (mosaic_v2's LTM delay) is a function of the optimiser step: the same
        # for every micro-batch of a step and on every rank, and restored with the step on resume.
        self.model.begin_step(self.trainer.global_step, self.recipe.seed)
        if not self._logging_step_aligned:
            # Lightning logs step k under its loop counter `_batches_that_stepped`, which equals the
            # optimiser step here (one optimiser). A checkpoint written after training ended already
            # holds the incremented counter and Lightning adds one more on restart, so extending a
            # finished run logged steps 0, 1, 3, 4. Realign it with the restored step, once per fit
            # (here: after the loop's own restart bookkeeping).
            self.trainer.fit_loop.epoch_loop._batches_that_stepped = self.trainer.global_step
            self._logging_step_aligned = True

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self._step_losses.append(loss.detach())  # checked before the optimiser step (gradient clipping)
        self.log(C.TRAIN_LOSS, loss, on_step=True, prog_bar=True, batch_size=batch["input_ids"].size(0))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Logged here (not via LearningRateMonitor, which names tags per param group:
        # train/lr/pg1, train/lr/pg2) so the tag is the documented `train/lr`.
        sched = self.lr_schedulers()
        self.log(C.TRAIN_LR, sched.get_last_lr()[0], on_step=True)
        self.log(C.TRAIN_TOKENS, float(self.trainer.global_step * self.tokens_per_step), on_step=True)
        # Model diagnostics (a host sync, and a collective under FSDP) only once per logging step: on
        # the micro-batch that completes a step whose number is a multiple of log.every_n_steps, the
        # moment Lightning writes on_step values (the same condition on every rank).
        completes_step = (batch_idx + 1) % self.trainer.accumulate_grad_batches == 0
        if completes_step and self.trainer.global_step % self.trainer.log_every_n_steps == 0:
            for tag, value in self.model.diagnostics().items():
                self.log(tag, value, on_step=True)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss = self._loss(batch)
        self.log(C.VAL_LOSS, loss, on_epoch=True, sync_dist=True, batch_size=batch["input_ids"].size(0))

    def on_validation_epoch_end(self) -> None:
        val = self.trainer.callback_metrics.get(C.VAL_LOSS)
        if val is not None and not self.trainer.sanity_checking:
            self.log(C.VAL_PPL, math.exp(min(float(val), 50.0)))
            self.log(C.HP_VAL_LOSS, float(val))

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clip by global norm (or only measure it when clipping is off), log it, and refuse to step
        on a non-finite gradient: the weights are still the last good ones at this point."""
        max_norm = self.recipe.train.grad_clip or math.inf
        params = [p for p in self.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        losses, self._step_losses = self._step_losses, []
        finite = torch.isfinite(norm)
        if losses:
            finite = finite & torch.isfinite(torch.stack(losses)).all()
        if not finite:  # the step's one host sync: the weights are still the last good ones here
            bad = [float(x) for x in losses if not torch.isfinite(x)]
            what = f"{C.TRAIN_LOSS} = {bad[0]}" if bad else f"{C.TRAIN_GRAD_NORM} = {norm.item()}"
            self._stop_on_nonfinite(what)
        self.log(C.TRAIN_GRAD_NORM, norm, on_step=True)

    def _stop_on_nonfinite(self, what: str) -> None:
        step = self.trainer.global_step
        path = None
        for cb in self.trainer.callbacks:
            save = getattr(cb, "save_last_good", None)
            if save is not None:
                path = save(self.trainer)
        where = f"; the last good weights are in {path}" if path else ""
        raise NonFiniteError(
            f"{what} at step {step}: training stopped{where}. "
            "Lower train.lr, raise train.warmup_steps or set train.grad_clip, then resume or restart."
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A checkpoint is self-describing: evaluation rebuilds the model without the run dir.
        checkpoint[RECIPE_KEY] = recipe_to_dict(self.recipe)

    def configure_optimizers(self) -> dict:
        opt, sched = build_optimizer(self.model, self.recipe.train, self.total_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
