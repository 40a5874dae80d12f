"""The shared property harness applied to the baselines (so the harness itself is exercised)."""

import pytest
import torch

from mosaics_lab.models import build_model
from mosaics_lab.models.gpt2 import GPT2Config
from mosaics_lab.models.llama import LlamaConfig
from tests.models.harness import assert_batch_invariant, assert_causal, assert_learns, assert_runs_at_length


@pytest.mark.parametrize("cfg_cls", [GPT2Config, LlamaConfig])
def test_baselines_pass_the_property_harness(cfg_cls):
    torch.manual_seed(0)
    model = build_model(cfg_cls(vocab_size=61, block_size=32, n_layer=2, n_head=2, n_embd=32)).eval()
    assert_causal(model, 61, T=32, j=11)
    assert_batch_invariant(model, 61, T=32)
    if cfg_cls is GPT2Config:  # learned positions end at block_size: a longer sequence is refused
        with pytest.raises(ValueError, match="block_size"):
            model(torch.randint(0, 61, (1, 4 * 32)))
    else:  # RoPE has no table: llama runs at 4x its training length
        assert_runs_at_length(model, 61, T=4 * 32)
    assert_learns(model, 61, T=32)
