"""gpt2 and llama baselines: contract of the model table and basic properties."""

import pytest
import torch

from mosaics_lab.models import build_model
from mosaics_lab.models.gpt2 import GPT2Config
from mosaics_lab.models.llama import LlamaConfig

CONFIGS = {
    "gpt2": GPT2Config(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=32),
    "llama": LlamaConfig(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=32, n_kv_head=2),
}


@pytest.mark.parametrize("arch", CONFIGS)
def test_forward_maps_tokens_to_logits(arch):
    model = build_model(CONFIGS[arch])
    logits = model(torch.randint(0, 97, (3, 17)))
    assert logits.shape == (3, 17, 97)


@pytest.mark.parametrize("arch", CONFIGS)
def test_causal_changing_a_token_never_changes_earlier_logits(arch):
    torch.manual_seed(0)
    model = build_model(CONFIGS[arch]).eval()
    idx = torch.randint(0, 97, (1, 24))
    j = 13
    other = idx.clone()
    other[0, j] = (idx[0, j] + 1) % 97
    a, b = model(idx), model(other)
    torch.testing.assert_close(a[:, :j], b[:, :j])
    assert not torch.allclose(a[:, j:], b[:, j:])


@pytest.mark.parametrize("arch", CONFIGS)
def test_weight_decay_groups_split_matrices_from_vectors(arch):
    model = build_model(CONFIGS[arch])
    decay, no_decay = model.optim_groups(0.1)
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    n_group = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert n_group == model.num_params()


def test_gpt2_refuses_sequences_longer_than_its_positions():
    model = build_model(CONFIGS["gpt2"])
    with pytest.raises(ValueError, match="block_size"):
        model(torch.randint(0, 97, (1, 33)))


def test_llama_runs_beyond_its_training_length():
    model = build_model(CONFIGS["llama"])
    assert model(torch.randint(0, 97, (1, 64))).shape == (1, 64, 97)


def test_gpt2_ties_and_llama_unties_embeddings():
    gpt2, llama = build_model(CONFIGS["gpt2"]), build_model(CONFIGS["llama"])
    assert gpt2.lm_head.weight is gpt2.wte.weight
    assert llama.lm_head.weight is not llama.tok_embeddings.weight


def test_unresolved_vocab_is_a_clear_error():
    with pytest.raises(ValueError, match="vocab_size"):
        build_model(GPT2Config())
