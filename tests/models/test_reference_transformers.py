"""gpt2 and llama pinned to Hugging Face `transformers` (GPT2LMHeadModel, LlamaForCausalLM).

Our weights are copied into a reference model built from a config object (nothing is downloaded)
and the logits are compared in float64 by relative error (norm of the difference over the norm of
the reference), for tied and untied embeddings and, for llama, MHA and GQA.

What the copy has to translate:
- gpt2: HF's Conv1D stores (in, out), the transpose of nn.Linear's (out, in). Our MLP uses the exact
  (erf) GELU of nanoGPT; HF's GPT-2 default is the tanh approximation `gelu_new`, so the reference
  is built with `activation_function="gelu"` (the size of that difference is pinned below).
- llama: ours rotates interleaved pairs (x[2i], x[2i+1]) by angle i; HF rotates halves
  (x[i], x[i + D/2]). Permuting each head's q and k rows to (0, 2, 4, ..., 1, 3, 5, ...) maps one
  onto the other (the q.k products are unchanged by a common permutation). Our `wkv` is (2, K, D)
  rows: keys then values. GQA on both sides maps query head h to kv head h // (H / K).

Both sides compute RoPE in float32 (and HF its RMSNorm), so llama's float64 agreement is ~1e-7, inside
the 1e-6 tolerance; gpt2 agrees to ~1e-15.

Shape letters: B batch, T sequence length, C channels, H heads, K kv heads, D head size, V vocabulary.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mosaics_lab.models import build_model
from mosaics_lab.models.gpt2 import GPT2Config
from mosaics_lab.models.llama import LlamaConfig

transformers = pytest.importorskip(
    "transformers", reason="the reference models come from Hugging Face transformers (the dev extra)"
)

pytestmark = pytest.mark.slow

REL_TOL = 1e-6  # float64 logits, ours vs the reference
V, T_BLOCK, C, N_LAYER = 101, 32, 48, 2


def rel_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).norm() / ref.norm()).item()


@torch.no_grad()
def randomise_(model: nn.Module, seed: int = 0) -> None:
    """O(1) activations and sharp attention (unlike the N(0, 0.02) init), so that a wrong position
    layout or head mapping shows; norm gains and biases away from 1 and 0 so that their copy is checked."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
        if p.dim() == 2 and "emb" not in name and "wte" not in name and "wpe" not in name:
            p.copy_(noise / p.shape[1] ** 0.5 * 1.5)  # a Linear (out, in)
        elif p.dim() == 2:
            p.copy_(noise)  # embeddings
        elif name.endswith("bias"):
            p.copy_(0.1 * noise)
        else:
            p.copy_(1.0 + 0.2 * noise)  # norm gains


def tokens(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# ---- gpt2 --------------------------------------------------------------------------------------


def hf_gpt2(cfg: GPT2Config, activation: str = "gelu") -> nn.Module:
    hf_cfg = transformers.GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.block_size,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=cfg.hidden,
        activation_function=activation,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,  # nn.LayerNorm's default, which ours uses
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=None,  # HF's 50256 lies outside the test vocabulary
        eos_token_id=None,
    )
    hf_cfg._attn_implementation = "eager"
    return transformers.GPT2LMHeadModel(hf_cfg).double().eval()


@torch.no_grad()
def copy_gpt2_(ours: nn.Module, hf: nn.Module) -> None:
    t = hf.transformer
    t.wte.weight.copy_(ours.wte.weight)
    t.wpe.weight.copy_(ours.wpe.weight)
    for a, b in zip(ours.blocks, t.h):
        for src, dst in ((a.ln_1, b.ln_1), (a.ln_2, b.ln_2)):
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
        # Conv1D keeps (in, out): the transpose of nn.Linear.
        for src, dst in (
            (a.attn.c_attn, b.attn.c_attn),
            (a.attn.c_proj, b.attn.c_proj),
            (a.mlp.c_fc, b.mlp.c_fc),
            (a.mlp.c_proj, b.mlp.c_proj),
        ):
            dst.weight.copy_(src.weight.T)
            dst.bias.copy_(src.bias)
    t.ln_f.weight.copy_(ours.ln_f.weight)
    t.ln_f.bias.copy_(ours.ln_f.bias)
    if not ours.config.tie_embeddings:
        hf.lm_head.weight.copy_(ours.lm_head.weight)


def gpt2_pair(tied: bool, activation: str = "gelu") -> tuple[nn.Module, nn.Module]:
    cfg = GPT2Config(
        vocab_size=V, block_size=T_BLOCK, n_layer=N_LAYER, n_head=4, n_embd=C, tie_embeddings=tied
    )
    ours = build_model(cfg).double().eval()
    randomise_(ours)
    hf = hf_gpt2(cfg, activation)
    copy_gpt2_(ours, hf)
    return ours, hf


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("T", [1, 23, T_BLOCK])
def test_gpt2_logits_match_transformers_gpt2lmheadmodel(tied, T):
    ours, hf = gpt2_pair(tied)
    if tied:
        assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()
    idx = tokens(3, T)
    with torch.no_grad():
        err = rel_error(ours(idx), hf(input_ids=idx).logits)
    assert err < REL_TOL, f"gpt2 ({'tied' if tied else 'untied'}, T={T}): relative error {err:.3g}"


def test_gpt2_uses_exact_gelu_not_the_tanh_gelu_of_hf_gpt2_default():
    """Pins the one known difference from the published GPT-2 (gelu_new, tanh approximation): ours is
    nanoGPT's exact GELU. With O(1) activations the logits differ by ~1e-4 relative, 100x the tolerance."""
    ours, hf = gpt2_pair(tied=True, activation="gelu_new")
    idx = tokens(3, 23)
    with torch.no_grad():
        err = rel_error(ours(idx), hf(input_ids=idx).logits)
    assert err > 10 * REL_TOL


# ---- llama -------------------------------------------------------------------------------------


def hf_llama(cfg: LlamaConfig) -> nn.Module:
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.n_embd,
        intermediate_size=cfg.hidden,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_size,
        max_position_embeddings=cfg.block_size,
        rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=cfg.tie_embeddings,
    )
    hf_cfg._attn_implementation = "eager"
    return transformers.LlamaForCausalLM(hf_cfg).double().eval()


def halves_from_pairs(w: torch.Tensor, n_heads: int, D: int) -> torch.Tensor:
    """Rows (H*D, C) in our interleaved-pair layout -> HF's rotate-half layout, per head."""
    perm = torch.cat((torch.arange(0, D, 2), torch.arange(1, D, 2)))
    return w.view(n_heads, D, -1)[:, perm].reshape(n_heads * D, -1)


@torch.no_grad()
def copy_llama_(ours: nn.Module, hf: nn.Module, permute_rope: bool = True) -> None:
    cfg = ours.config
    H, K, D = cfg.n_head, cfg.kv_heads, cfg.head_size
    fix = (lambda w, n: halves_from_pairs(w, n, D)) if permute_rope else (lambda w, n: w)
    hf.model.embed_tokens.weight.copy_(ours.tok_embeddings.weight)
    for a, b in zip(ours.blocks, hf.model.layers):
        b.input_layernorm.weight.copy_(a.attn_norm.weight)
        b.post_attention_layernorm.weight.copy_(a.ffn_norm.weight)
        wk, wv = a.attn.wkv.weight.split(K * D, dim=0)  # (2 K D, C): keys, then values
        b.self_attn.q_proj.weight.copy_(fix(a.attn.wq.weight, H))
        b.self_attn.k_proj.weight.copy_(fix(wk, K))
        b.self_attn.v_proj.weight.copy_(wv)
        b.self_attn.o_proj.weight.copy_(a.attn.c_proj.weight)
        b.mlp.gate_proj.weight.copy_(a.ffn.w1.weight)
        b.mlp.up_proj.weight.copy_(a.ffn.w3.weight)
        b.mlp.down_proj.weight.copy_(a.ffn.c_proj.weight)
    hf.model.norm.weight.copy_(ours.norm.weight)
    if not cfg.tie_embeddings:
        hf.lm_head.weight.copy_(ours.lm_head.weight)


LLAMA_HEADS = {"mha": (4, None), "gqa": (4, 2), "mqa": (4, 1)}


def llama_pair(tied: bool, attn: str, permute_rope: bool = True) -> tuple[nn.Module, nn.Module]:
    n_head, n_kv = LLAMA_HEADS[attn]
    cfg = LlamaConfig(
        vocab_size=V,
        block_size=T_BLOCK,
        n_layer=N_LAYER,
        n_head=n_head,
        n_kv_head=n_kv,
        n_embd=C,
        tie_embeddings=tied,
    )
    ours = build_model(cfg).double().eval()
    randomise_(ours)
    hf = hf_llama(cfg)
    copy_llama_(ours, hf, permute_rope)
    return ours, hf


@pytest.mark.parametrize("attn", list(LLAMA_HEADS))
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("T", [1, 23, T_BLOCK])
def test_llama_logits_match_transformers_llamaforcausallm(tied, attn, T):
    ours, hf = llama_pair(tied, attn)
    if tied:
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    idx = tokens(3, T)
    with torch.no_grad():
        err = rel_error(ours(idx), hf(input_ids=idx).logits)
    assert err < REL_TOL, f"llama ({'tied' if tied else 'untied'}, {attn}, T={T}): relative error {err:.3g}"


def test_llama_rope_layout_differs_from_hf_without_the_pair_to_half_permutation():
    """The permutation is what makes the two agree: copied as is, q and k are rotated in other planes."""
    ours, hf = llama_pair(tied=False, attn="gqa", permute_rope=False)
    idx = tokens(3, 23)
    with torch.no_grad():
        err = rel_error(ours(idx), hf(input_ids=idx).logits)
    assert err > 1e3 * REL_TOL
