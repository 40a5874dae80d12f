"""mosaic_v1 against a small, independent statement of the authors' nanoMosaics forward.

The statement below is written from MODELS.md section 1 and a reading of the authors' public
`nanoMosaics/mosaic_model.py` (facebookresearch/MemoryMosaics): dense (T x T) float64 matrices, one
loop per layer, nothing shared with `mosaics_lab.models` or `mosaics_lab.ops`. Our weights are copied
in by name, so any difference in the equations (a clamp, an eps, a bias, the value peek) shows as a
logit difference.

Shapes: B batch, T time steps, C channels, H heads, D head size, P banks, S pairs per bank.
"""

from __future__ import annotations

import math

import pytest
import torch

from mosaics_lab.models import build_model
from mosaics_lab.models.mosaic_v1 import MosaicV1Config

C_MAX = math.log(2**16 - 1)  # the authors' key_scale_max: the scale fits in fp16


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    y = (x - mean) / torch.sqrt(var + 1e-5) * weight
    return y if bias is None else y + bias


def _linear(x: torch.Tensor, p: dict, name: str) -> torch.Tensor:
    y = x @ p[f"{name}.weight"].T
    bias = p.get(f"{name}.bias")
    return y if bias is None else y + bias


def _heads(x: torch.Tensor, H: int) -> torch.Tensor:
    B, T, C = x.shape
    return x.view(B, T, H, C // H).permute(0, 2, 1, 3)  # (B, H, T, D)


def _key(x: torch.Tensor, p: dict, name: str, H: int, scale_pow: int) -> torch.Tensor:
    """LeakyAvg (coef exp(-10 |beta| lag), lower-triangular), normalise with eps 1e-10, then
    exp(min(scale_pow * 10 * key_scale, c_max))."""
    k = _heads(_linear(x, p, f"{name}.c_k"), H)  # (B, H, T, D)
    T = k.shape[-2]
    lag = (torch.arange(T).unsqueeze(-1) - torch.arange(T)).double()  # [t, i] = t - i
    beta = (p[f"{name}.theta"].abs() * 10).view(1, H, 1, 1)
    coef = torch.exp(-lag * beta).tril()  # (1, H, T, T)
    k = coef @ k
    k = k / (k.norm(dim=-1, keepdim=True) + 1e-10)
    scale = torch.clamp(scale_pow * 10 * p[f"{name}.phi"], max=C_MAX).exp()
    return k * scale.view(1, H, 1, 1)


def _value(x: torch.Tensor, p: dict, name: str, H: int) -> torch.Tensor:
    """(1 - coef) * v_{t+1} + coef * v_t (v_{T+1} = 0), normalise with eps 1e-10, times exp(10 val_scale)."""
    v = _heads(_linear(x, p, f"{name}.c_v"), H)
    nxt = torch.cat([v[:, :, 1:], torch.zeros_like(v[:, :, :1])], dim=2)
    coef = p[f"{name}.gamma"].view(1, H, 1, 1)
    v = (1 - coef) * nxt + coef * v
    v = v / (v.norm(dim=-1, keepdim=True) + 1e-10)
    return v * torch.exp(10 * p[f"{name}.psi"]).view(1, H, 1, 1)


def _softmax_rows(logits: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    logits = logits.masked_fill(~visible, float("-inf"))
    m = logits.amax(-1, keepdim=True)
    w = torch.exp(logits - m).masked_fill(~visible, 0.0)
    return w / w.sum(-1, keepdim=True)


def authors_forward(p: dict, idx: torch.Tensor, n_layer: int, H: int, pmem_count: int) -> torch.Tensor:
    """Logits (B, T, V) of the authors' MemoryMosaic in float64, from our state dict `p`."""
    x = p["wte.weight"][idx]  # no positional embedding
    B, T, C = x.shape
    for layer in range(n_layer):
        b = f"blocks.{layer}"
        # Contextual memory: query t against keys i < t, row 0 is 0.
        h = _layer_norm(x, p[f"{b}.ln_1.weight"], p.get(f"{b}.ln_1.bias"))
        k = _key(h, p, f"{b}.cmem.key", H, scale_pow=1)
        v = _value(h, p, f"{b}.cmem.value", H)
        visible = torch.ones(T, T, dtype=torch.bool).tril(-1)
        w = _softmax_rows(k @ k.transpose(-1, -2), visible)
        y = torch.nan_to_num(w) @ v  # row 0 sees nothing: 0
        y[:, :, 0] = 0.0
        y = y.permute(0, 2, 1, 3).reshape(B, T, C)
        x = x + _linear(y, p, f"{b}.cmem.c_proj")
        # Persistent memory: scale_pow 2 (the banks have no scale), banks averaged.
        h = _layer_norm(x, p[f"{b}.ln_2.weight"], p.get(f"{b}.ln_2.bias"))
        q = _key(h, p, f"{b}.pmem.key", H, scale_pow=2)  # (B, H, T, D)
        bank_k, bank_v = p[f"{b}.pmem.bank_k"], p[f"{b}.pmem.bank_v"]  # (H, P, S, D)
        z = 0
        for i in range(pmem_count):
            att = torch.softmax(q @ bank_k[:, i].unsqueeze(0).transpose(-1, -2), dim=-1)  # (B, H, T, S)
            z = z + att @ bank_v[:, i].unsqueeze(0)
        z = z / pmem_count * torch.exp(10 * p[f"{b}.pmem.psi"]).view(1, H, 1, 1)
        x = x + _linear(z.permute(0, 2, 1, 3).reshape(B, T, C), p, f"{b}.pmem.c_proj")
    x = _layer_norm(x, p["ln_f.weight"], p.get("ln_f.bias"))
    return x @ p["wte.weight"].T  # tied LM head


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    "regime,phi",
    [
        # log10 bandwidth of the contextual memory 2 * 10 phi: ~e^2 at init, ~400 (beta of the issue).
        ("init", (0.1, 0.1, 0.1, 0.1)),
        ("beta_400", (0.3, 0.3, 0.3, 0.3)),
        # Every clamp active: 10 phi and 2 * 10 phi' above c_max = 11.09 (phi 0.7: the 0.23 logit gap).
        ("clamps_active", (0.7, 1.2, 2.0, 0.6)),
    ],
)
def test_v1_forward_equals_the_authors_equations_in_float64(bias, regime, phi):
    torch.manual_seed(0)
    H, n_layer, P = 4, 2, 2
    config = MosaicV1Config(
        vocab_size=53, block_size=24, n_layer=n_layer, n_head=H, n_embd=32, bias=bias, pmem_count=P
    )
    model = build_model(config).double().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".phi"):
                param.copy_(torch.tensor(phi, dtype=torch.float64))
            elif name.endswith(".bias") or name.endswith(".psi") or name.endswith(".theta"):
                param.add_(0.1 * torch.randn_like(param))  # non-trivial biases and scalars
    idx = torch.randint(0, 53, (2, 24))
    expected = authors_forward(dict(model.state_dict()), idx, n_layer, H, P)
    with torch.no_grad():
        actual = model(idx)
    rel = ((actual - expected).norm() / expected.norm()).item()
    assert rel < 1e-6, f"relative logit error {rel:.2e}"


def test_bias_true_puts_biases_on_every_projection_and_norm():
    model = build_model(MosaicV1Config(vocab_size=53, n_layer=1, n_head=4, n_embd=32, bias=True))
    names = {n for n, _ in model.named_parameters()}
    for proj in (
        "cmem.key.c_k",
        "cmem.value.c_v",
        "cmem.c_proj",
        "pmem.key.c_k",
        "pmem.c_proj",
        "ln_1",
        "ln_2",
    ):
        assert f"blocks.0.{proj}.bias" in names, proj
    plain = build_model(MosaicV1Config(vocab_size=53, n_layer=1, n_head=4, n_embd=32))
    assert not [n for n, _ in plain.named_parameters() if n.endswith(".bias")]


def test_memory_dropout_acts_on_attention_weights_by_default_and_on_retrievals_by_flag():
    weights = build_model(MosaicV1Config(vocab_size=53, n_layer=1, n_head=4, n_embd=32, dropout=0.05))
    block = weights.blocks[0]
    assert block.cmem.weight_dropout == 0.05 and block.pmem.weight_dropout == 0.05
    assert block.cmem.retrieval_dropout.p == 0.0
    old = build_model(
        MosaicV1Config(
            vocab_size=53, n_layer=1, n_head=4, n_embd=32, dropout=0.05, memory_dropout="retrieval"
        )
    )
    block = old.blocks[0]
    assert block.cmem.weight_dropout == 0.0 and block.pmem.weight_dropout == 0.0
    assert block.cmem.retrieval_dropout.p == 0.05
    # Training with weight dropout changes the output; eval mode is deterministic.
    idx = torch.randint(0, 53, (2, 16))
    weights.train()
    torch.manual_seed(1)
    a = weights(idx)
    torch.manual_seed(2)
    b = weights(idx)
    assert not torch.allclose(a, b)
    weights.eval()
    assert torch.equal(weights(idx), weights(idx))
