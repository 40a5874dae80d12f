"""Removing a memory at evaluation (``models.ablation.ablated``): the ablated model is exactly the model
whose output projection ignores that memory, the flags last only for the block, and what cannot be
ablated is a clear error."""

from __future__ import annotations

import copy

import pytest
import torch

from mosaics_lab.config.models import GPT2Config, LlamaConfig, MosaicV1Config, MosaicV2Config
from mosaics_lab.models import build_model
from mosaics_lab.models.ablation import ABLATABLE_MEMORIES, ablated

V, T, C = 61, 40, 32


def mosaic_v2(**overrides) -> torch.nn.Module:
    fields = dict(
        vocab_size=V,
        block_size=T,
        n_layer=2,
        n_head=2,
        n_embd=C,
        stm_window=8,
        ltm_delay_train=[4, 12],
        ltm_delay_eval=4,
    )
    torch.manual_seed(0)
    return build_model(MosaicV2Config(**{**fields, **overrides})).eval()


def without(model: torch.nn.Module, memory: str) -> torch.nn.Module:
    """A copy of ``model`` built by hand without ``memory``'s contribution: every block's W_o (2C -> C,
    input [STM ; LTM]) gets zero columns where that memory's output enters."""
    copied = copy.deepcopy(model)
    columns = slice(0, C) if memory == "stm" else slice(C, 2 * C)
    with torch.no_grad():
        for block in copied.blocks:
            block.c_proj.weight[:, columns] = 0.0
    return copied


def tokens(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (3, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("memory", ABLATABLE_MEMORIES)
def test_an_ablated_memory_contributes_exactly_zero(memory):
    model = mosaic_v2()
    idx = tokens()
    with torch.no_grad():
        full = model(idx)
        with ablated(model, memory) as same:
            assert same is model
            ablated_logits = model(idx)
        expected = without(model, memory)(idx)
        after = model(idx)
    assert (ablated_logits - full).abs().max() > 1e-3  # the memory mattered
    torch.testing.assert_close(ablated_logits, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(after, full, rtol=0, atol=0)  # the flags lasted only for the block


def test_the_ablation_holds_with_a_document_mask():
    model = mosaic_v2()
    idx = tokens(1)
    doc_ids = torch.cat([torch.zeros(3, 25, dtype=torch.long), torch.ones(3, T - 25, dtype=torch.long)], 1)
    with torch.no_grad(), ablated(model, "ltm"):
        got = model(idx, doc_ids)
    with torch.no_grad():
        torch.testing.assert_close(got, without(model, "ltm")(idx, doc_ids), rtol=0, atol=1e-6)


def test_no_ablation_is_the_model_unchanged():
    model = mosaic_v2()
    idx = tokens()
    with torch.no_grad():
        full = model(idx)
        with ablated(model, None):
            torch.testing.assert_close(model(idx), full, rtol=0, atol=0)


def test_the_flags_are_cleared_when_the_block_raises():
    model = mosaic_v2()
    with pytest.raises(RuntimeError, match="boom"), ablated(model, "stm"):
        raise RuntimeError("boom")
    assert all(not block.zeroed_memories for block in model.blocks)


@pytest.mark.parametrize(
    "config",
    [
        LlamaConfig(vocab_size=V, block_size=T, n_layer=1, n_head=2, n_embd=C),
        GPT2Config(vocab_size=V, block_size=T, n_layer=1, n_head=2, n_embd=C),
        MosaicV1Config(vocab_size=V, block_size=T, n_layer=1, n_head=2, n_embd=C),
    ],
    ids=lambda c: c.arch,
)
def test_a_model_without_stm_and_ltm_cannot_be_ablated(config):
    model = build_model(config)
    with pytest.raises(ValueError, match="no memory to remove.*mosaic_v2"), ablated(model, "ltm"):
        pass


def test_an_unknown_memory_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown memory 'pmem'.*stm, ltm"), ablated(mosaic_v2(), "pmem"):
        pass


def test_a_memory_the_model_was_built_without_is_an_error():
    model = mosaic_v2(memories="stm_only")
    with pytest.raises(ValueError, match="has no ltm"), ablated(model, "ltm"):
        pass
    with torch.no_grad(), ablated(model, "stm"):  # the only memory left: every block reads nothing
        logits = model(tokens())
    assert torch.isfinite(logits).all()
