"""Memory Mosaics v1: the shared model properties plus the memories' own contract (MODELS.md section 1)."""

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from mosaics_lab.config import load_recipe
from mosaics_lab.constants import memory_tag
from mosaics_lab.models import build_model
from mosaics_lab.models.gpt2 import Block as GPT2Block
from mosaics_lab.models.gpt2 import GPT2Config
from mosaics_lab.models.mosaic_v1 import (
    Block,
    ContextualMemory,
    KeyExtractor,
    MosaicV1Config,
    PersistentMemory,
    ValueExtractor,
)
from mosaics_lab.ops import leaky_average_reference
from mosaics_lab.training.matching import match_params, matched_model
from tests.models.harness import assert_batch_invariant, assert_causal, assert_runs_at_length, train_one_step

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
BYTE_VOCAB = 257  # the byte tokenizer's vocabulary (256 bytes + end of text)
V = 61


def tiny(**overrides) -> MosaicV1Config:
    return MosaicV1Config(
        **{"vocab_size": V, "block_size": 16, "n_layer": 2, "n_head": 4, "n_embd": 32, **overrides}
    )


@pytest.mark.parametrize("persistent", ["pmem", "mlp", "swiglu"])
def test_mosaic_v1_passes_the_property_harness(persistent):
    torch.manual_seed(0)
    model = build_model(tiny(persistent=persistent)).eval()
    assert_causal(model, V, T=32, j=11)
    assert_causal(model, V, T=32, j=0)
    assert_batch_invariant(model, V, T=32)
    # No position table and no T x T buffer: a model trained at T runs at 4T.
    assert_runs_at_length(model, V, T=4 * model.config.block_size)


@pytest.mark.parametrize("persistent", ["pmem", "mlp", "swiglu"])
def test_every_persistent_kind_builds_and_trains_one_step(persistent):
    torch.manual_seed(0)
    model = build_model(tiny(persistent=persistent))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert train_one_step(model, V, T=24) > 0
    for name, p in model.named_parameters():
        assert not torch.equal(p, before[name]), f"{name} did not change in a training step"


def test_contextual_memory_outputs_exactly_zero_at_the_first_position():
    torch.manual_seed(0)
    cmem = ContextualMemory(tiny()).eval()
    y = cmem(torch.randn(3, 9, 32))
    assert torch.equal(y[:, 0], torch.zeros_like(y[:, 0]))
    assert (y[:, 1:].abs().amax(-1) > 0).all(), "positions after the first must see the pairs before them"


def test_value_extractor_peeks_one_token_ahead_as_the_formula_says():
    values = ValueExtractor(tiny(n_embd=2, n_head=1))
    with torch.no_grad():
        values.c_v.weight.copy_(torch.eye(2))
        values.gamma.fill_(0.25)
        values.psi.fill_(math.log(2) / 10)  # a = exp(10 psi) = 2
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]]])  # (B=1, T=3, C=2)
    # vbar_1 = (1, 3)/4, vbar_2 = (9, 13)/4, vbar_3 = 0.25 * (3, 4) (nothing after the last token)
    expected = 2 * torch.tensor(
        [[1 / math.sqrt(10), 3 / math.sqrt(10)], [9 / math.sqrt(250), 13 / math.sqrt(250)], [0.6, 0.8]]
    )
    torch.testing.assert_close(values(x)[0, 0], expected, rtol=0, atol=1e-5)


def test_key_extractor_is_the_scaled_leaky_average_with_one_decay_per_head():
    torch.manual_seed(0)
    H, C, T = 4, 32, 13
    keys = KeyExtractor(tiny(n_head=H, n_embd=C))
    theta = torch.linspace(0.5, 5.0, H) / 10
    torch.testing.assert_close(keys.theta.detach(), theta)
    x = torch.randn(2, T, C)
    ktilde = (x @ keys.c_k.weight.T).view(2, T, H, C // H).transpose(1, 2)  # (B, H, T, D)
    unit = leaky_average_reference(ktilde.double(), (-10 * theta.abs()).double().view(1, H, 1)).float()
    expected = math.exp(10 * 0.1) * unit  # s = exp(10 phi), phi = 0.1 at init
    torch.testing.assert_close(keys(x), expected, rtol=1e-4, atol=1e-5)


def test_key_scale_is_capped_at_key_scale_max():
    keys = KeyExtractor(tiny())
    with torch.no_grad():
        keys.phi.fill_(5.0)  # 10 phi = 50 > ln(65535)
    torch.testing.assert_close(keys.scale(), torch.full((4,), 65535.0))


def test_persistent_memory_averages_per_bank_kernel_regression_with_the_clamped_squared_scale():
    torch.manual_seed(0)
    B, T, C, H, P, S = 2, 7, 32, 4, 3, 5
    pmem = PersistentMemory(tiny(n_embd=C, n_head=H, pmem_count=P, pmem_size=S)).eval()
    with torch.no_grad():
        # 2 * 10 * 0.7 = 14 > c_max = ln 65535: the last head's bandwidth is clamped at 65535.
        pmem.key.phi.copy_(torch.tensor([0.0, 0.05, 0.1, 0.7]))
        pmem.psi.copy_(torch.tensor([-0.1, 0.0, 0.05, 0.1]))
    x = torch.randn(B, T, C)
    bandwidth = torch.exp(torch.clamp(20 * pmem.key.phi.detach(), max=math.log(65535))).view(1, H, 1, 1)
    assert bandwidth[0, 3, 0, 0] == pytest.approx(65535.0)
    unit = leaky_average_reference(
        pmem.key.c_k(x).view(B, T, H, C // H).transpose(1, 2), pmem.key.log_decay().view(1, H, 1)
    )
    q = bandwidth * unit  # the query carries the whole bandwidth: the banks have no scale
    z = torch.zeros(B, H, T, C // H)
    for p in range(P):
        weights = torch.softmax(q @ pmem.bank_k[:, p].transpose(-1, -2), dim=-1)  # (B, H, T, S)
        z += weights @ pmem.bank_v[:, p] / P
    z = torch.exp(10 * pmem.psi.detach()).view(1, H, 1, 1) * z
    expected = pmem.c_proj(z.transpose(1, 2).reshape(B, T, C))
    torch.testing.assert_close(pmem(x), expected, rtol=1e-4, atol=1e-5)


def test_auto_pmem_size_matches_a_gpt2_block_at_gpt2_small_width():
    cfg = MosaicV1Config(vocab_size=BYTE_VOCAB, n_embd=768, n_head=12, n_layer=12)
    assert cfg.pairs == 2688 == 3.5 * 768
    with torch.device("meta"):
        mosaic = Block(cfg)
        gpt2 = GPT2Block(GPT2Config(vocab_size=BYTE_VOCAB, n_embd=768, n_head=12, n_layer=12, bias=False))
    n_mosaic = sum(p.numel() for p in mosaic.parameters())
    n_gpt2 = sum(p.numel() for p in gpt2.parameters())
    assert n_gpt2 == 12 * 768**2 + 2 * 768  # matrices + the two LayerNorm weights
    per_head_scalars = sum(p.numel() for p in mosaic.parameters() if p.dim() == 1 and p.numel() == 12)
    assert per_head_scalars == 7 * 12  # theta, phi (x2 key extractors), gamma, psi (values and pmem output)
    assert n_mosaic == n_gpt2 + per_head_scalars


def test_auto_pmem_size_keeps_the_match_with_several_banks():
    one, four = MosaicV1Config(n_embd=128, pmem_count=1), MosaicV1Config(n_embd=128, pmem_count=4)
    assert (one.pairs, four.pairs) == (448, 112)


def _count(cfg) -> int:
    with torch.device("meta"):
        return build_model(cfg).num_params()


def _resolved_model(recipe: str):
    return matched_model(load_recipe(RECIPES / recipe), vocab_size=BYTE_VOCAB)


def test_tiny_recipes_are_parameter_matched_within_2_percent():
    mosaic, gpt2 = _resolved_model("mosaic_v1_tiny.yaml"), _resolved_model("gpt2_tiny_matched.yaml")
    assert (mosaic.arch, gpt2.arch) == ("mosaic_v1", "gpt2")
    assert (mosaic.n_embd, mosaic.n_layer, mosaic.n_head, mosaic.block_size) == (128, 4, 4, 128)
    n_mosaic, n_gpt2 = _count(mosaic), _count(gpt2)
    assert abs(n_mosaic - n_gpt2) / n_mosaic < 0.02, (n_mosaic, n_gpt2)


@pytest.mark.parametrize(("persistent", "knob"), [("pmem", "pmem_size"), ("mlp", "d_ff"), ("swiglu", "d_ff")])
def test_matching_a_mosaic_to_gpt2_adjusts_its_persistent_memory(persistent, knob):
    cfg = dataclasses.replace(_resolved_model("mosaic_v1_tiny.yaml"), persistent=persistent)
    assert knob == cfg.match_knob()
    target = _count(_resolved_model("gpt2_tiny.yaml"))
    matched = match_params(cfg, RECIPES / "gpt2_tiny.yaml")
    assert getattr(matched, knob) is not None
    assert abs(_count(matched) - target) / target < 0.02


def test_gpt2_small_recipe_has_the_paper_settings():
    recipe = load_recipe(RECIPES / "mosaic_v1_gpt2small.yaml")
    m, t = recipe.model, recipe.train
    assert (m.arch, m.n_embd, m.n_layer, m.n_head, m.block_size, m.pairs) == (
        "mosaic_v1",
        768,
        12,
        12,
        512,
        2688,
    )
    assert (m.ic_p, m.hd_p) == (0.05, 0.05)
    assert (t.lr, t.lr * t.min_lr_ratio, t.warmup_steps, t.max_steps) == (
        5e-3,
        pytest.approx(1e-4),
        2000,
        80000,
    )
    assert (t.global_batch_size, t.beta1, t.beta2, t.weight_decay, t.grad_clip) == (512, 0.9, 0.95, 0.1, 1.0)


def test_per_head_scalars_are_not_decayed_and_banks_and_matrices_are():
    model = build_model(tiny())
    decay, no_decay = ({id(p) for p in g["params"]} for g in model.optim_groups(0.1))
    assert model.optim_groups(0.1)[0]["weight_decay"] == 0.1
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("theta", "phi", "gamma", "psi") or "ln_" in name:
            assert id(p) in no_decay, f"{name} is weight-decayed"
        if leaf in ("bank_k", "bank_v") or (leaf == "weight" and p.dim() == 2):
            assert id(p) in decay, f"{name} is not weight-decayed"


def test_diagnostics_report_mean_bandwidth_per_layer_and_per_head_for_the_first_layer():
    model = build_model(tiny(n_layer=3, n_head=4))
    diag = model.diagnostics()
    means = {memory_tag(layer, mem, "beta") for layer in range(3) for mem in ("cmem", "pmem")}
    heads = {memory_tag(0, mem, f"beta/h{h}") for mem in ("cmem", "pmem") for h in range(4)}
    assert set(diag) == means | heads  # as mosaic_v2: depth + heads tags, not depth x heads
    assert all(v == pytest.approx(math.exp(2.0)) for v in diag.values())  # beta = s^2 = exp(2 * 10 * 0.1)
    with torch.no_grad():
        model.blocks[0].cmem.key.phi[2] = 0.3
        model.blocks[1].cmem.key.phi[2] = 0.3
    diag = model.diagnostics()
    assert diag[memory_tag(0, "cmem", "beta/h2")] == pytest.approx(math.exp(6.0))
    assert diag[memory_tag(1, "cmem", "beta")] == pytest.approx((3 * math.exp(2.0) + math.exp(6.0)) / 4)
    mlp = build_model(tiny(persistent="mlp")).diagnostics()
    assert set(mlp) == {memory_tag(layer, "cmem", "beta") for layer in range(2)} | {
        memory_tag(0, "cmem", f"beta/h{h}") for h in range(4)
    }


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"persistent": "ffn"}, "model.persistent"),
        ({"pmem_size": 0}, "model.pmem_size"),
        ({"persistent": "mlp", "pmem_size": 64}, "model.pmem_size"),
        ({"d_ff": 128}, "model.d_ff"),
        ({"pmem_count": 0}, "model.pmem_count"),
        ({"key_scale_max": 0.0}, "model.key_scale_max"),
        ({"ic_dropout": 1.0}, "model.ic_dropout"),
        ({"hd_dropout": -0.1}, "model.hd_dropout"),
        ({"memory_dropout": "output"}, "model.memory_dropout"),
        ({"norm_eps": 0.0}, "model.norm_eps"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny(**overrides)


def test_dropouts_default_to_model_dropout():
    cfg = tiny(dropout=0.1, hd_dropout=0.0)
    assert (cfg.ic_p, cfg.hd_p) == (0.1, 0.0)
