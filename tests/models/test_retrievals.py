"""models.retrievals: the opt-in read-out of the memories' retrieval weights (what `inspect` plots)."""

from __future__ import annotations

import math

import pytest
import torch

from mosaics_lab.models import build_model
from mosaics_lab.models.mosaic_v1 import MosaicV1Config
from mosaics_lab.models.mosaic_v2 import MosaicV2Config
from mosaics_lab.models.retrievals import record_retrievals
from mosaics_lab.ops import document_ids

V, T, H, C = 37, 20, 2, 16
WINDOW, DELAY = 6, 4


def v2(**overrides):
    torch.manual_seed(0)
    config = dict(
        vocab_size=V, block_size=T, n_layer=2, n_head=H, n_embd=C, stm_window=WINDOW, ltm_delay_eval=DELAY
    )
    return build_model(MosaicV2Config(**{**config, **overrides})).eval()


def v1(**overrides):
    torch.manual_seed(0)
    config = dict(vocab_size=V, block_size=T, n_layer=2, n_head=H, n_embd=C, pmem_size=5, pmem_count=2)
    return build_model(MosaicV1Config(**{**config, **overrides})).eval()


def visible(min_lag: int, max_lag: int | None, docs: torch.Tensor | None = None) -> torch.Tensor:
    """(B or 1, 1, T, T) bool: [query t, pair i] that the memory lets query t read."""
    t = torch.arange(T)
    lag = t[:, None] - t[None, :]
    mask = lag >= min_lag
    if max_lag is not None:
        mask &= lag <= max_lag
    mask = mask[None, None]
    if docs is not None:
        mask = mask & (docs[:, None, :, None] == docs[:, None, None, :])
    return mask


LAGS = {"stm": (1, WINDOW - 1), "ltm": (DELAY, None), "cmem": (1, None)}


@pytest.mark.parametrize("masked", [False, True], ids=["one document", "documents"])
@pytest.mark.parametrize("build", [v1, v2], ids=["mosaic_v1", "mosaic_v2"])
def test_weights_of_a_head_sum_to_one_over_visible_pairs_and_are_zero_elsewhere(build, masked):
    model = build()
    idx = torch.randint(0, V - 1, (2, T))
    docs = None
    if masked:
        idx[0, 7] = idx[1, 12] = V - 1  # <|eot|>: two documents in each row, cut at different places
        docs = document_ids(idx, V - 1)
    with record_retrievals(model) as recorded:
        model(idx, docs)
    names = {"contextual": [n for n in recorded.memories() if n != "pmem"]}
    assert names["contextual"] == (["cmem"] if build is v1 else ["stm", "ltm"])
    assert recorded.layers() == [0, 1]
    for (layer, name), w in recorded.weights.items():
        if name == "pmem":
            assert w.shape == (2, H, T, 2 * 5)  # two banks of five learned pairs
            torch.testing.assert_close(w.sum(-1), torch.ones(2, H, T))
            continue
        assert w.shape == (2, H, T, T)
        seen = visible(*LAGS[name], docs).expand_as(w)
        assert (w[~seen] == 0).all(), f"{name} layer {layer} reads pairs it cannot see"
        rows = w.sum(-1)
        sees_some = seen.any(-1)
        torch.testing.assert_close(rows[sees_some], torch.ones_like(rows[sees_some]))
        assert (rows[~sees_some] == 0).all()  # a query that sees nothing reads nothing
        assert (w[seen] > 0).all()


def test_mosaic_v2_weights_match_a_hand_computation_on_a_two_layer_model():
    model = v2()
    torch.manual_seed(1)
    idx = torch.randint(0, V, (1, T))
    with record_retrievals(model) as recorded:
        model(idx)
    x = model.tok_embeddings(idx)  # (1, T, C): the input of block 0
    for layer, block in enumerate(model.blocks):
        u = block.memory_norm(x).double()[0]  # (T, C)
        for name in ("stm", "ltm"):
            memory = getattr(block, name)
            W_phi, w_g, w_l = (m.weight.double() for m in (memory.key.phi, memory.key.gate, memory.key.decay))
            bw = memory.bandwidth
            beta0, beta1 = torch.exp(bw.th0.double()), torch.exp(bw.th1.double())
            alpha = bw.th_a.double().abs().clamp(max=1.0)
            min_lag, max_lag = LAGS[name]
            for h in range(H):
                # Gated leaky average, one step at a time: kbar_t = e^g_t x_t + e^-|lambda_t| kbar_{t-1}.
                rows = slice(h * (C // H), (h + 1) * (C // H))
                kbar, keys = torch.zeros(C // H, dtype=torch.float64), []
                for t in range(T):
                    gate = torch.exp(w_g[h] @ u[t])
                    decay = torch.exp(-(w_l[h] @ u[t]).abs())
                    kbar = gate * (W_phi[rows] @ u[t]) + decay * kbar
                    keys.append(kbar / kbar.norm())
                expected = torch.zeros(T, T, dtype=torch.float64)
                for t in range(T):
                    pairs = [
                        i for i in range(T) if t - i >= min_lag and (max_lag is None or t - i <= max_lag)
                    ]
                    if not pairs:
                        continue
                    b = beta1[h] * len(pairs) ** alpha[h] + beta0[h]  # beta(n), n = pairs held
                    logits = torch.stack([b * keys[t] @ keys[i] for i in pairs])
                    expected[t, pairs] = torch.softmax(logits, 0)
                got = recorded.weights[(layer, name)][0, h].double()
                torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
        x = block(x, None, ltm_delay=DELAY)  # the input of the next block


def test_mosaic_v1_weights_match_a_hand_computation_on_a_two_layer_model():
    model = v1()
    with torch.no_grad():
        for block in model.blocks:
            block.cmem.key.phi.fill_(0.12)  # a bandwidth s^2 = e^2.4, not the init's
    torch.manual_seed(1)
    idx = torch.randint(0, V, (1, T))
    with record_retrievals(model) as recorded:
        model(idx)
    x = model.wte(idx)
    for layer, block in enumerate(model.blocks):
        u = block.ln_1(x).double()[0]
        key = block.cmem.key
        W_k = key.c_k.weight.double()
        for h in range(H):
            rows = slice(h * (C // H), (h + 1) * (C // H))
            decay = math.exp(-10 * abs(float(key.theta[h].detach())))
            kbar, keys = torch.zeros(C // H, dtype=torch.float64), []
            for t in range(T):
                kbar = W_k[rows] @ u[t] + decay * kbar
                keys.append(kbar / kbar.norm())
            beta = math.exp(10 * float(key.phi[h].detach())) ** 2  # q = s k and k = s k: bandwidth s^2
            expected = torch.zeros(T, T, dtype=torch.float64)
            for t in range(1, T):
                expected[t, :t] = torch.softmax(torch.stack([beta * keys[t] @ keys[i] for i in range(t)]), 0)
            torch.testing.assert_close(
                recorded.weights[(layer, "cmem")][0, h].double(), expected, atol=2e-5, rtol=1e-4
            )
        x = block(x)


@pytest.mark.parametrize("build", [v1, v2], ids=["mosaic_v1", "mosaic_v2"])
def test_recording_changes_no_output_and_leaves_no_hook_behind(build):
    model = build()
    idx = torch.randint(0, V, (2, T))
    plain = model(idx)
    with record_retrievals(model) as recorded:
        recording = model(idx)
    torch.testing.assert_close(recording, plain, rtol=0, atol=0)
    assert recorded.weights
    assert all(not m._forward_hooks for m in model.modules())  # off again: no cost, nothing recorded
    recorded.weights.clear()
    model(idx)
    assert not recorded.weights


def test_weights_times_values_are_what_the_memory_returns():
    model = v2()
    idx = torch.randint(0, V, (1, T))
    block = model.blocks[0]
    u = block.memory_norm(model.tok_embeddings(idx))
    with record_retrievals(model) as recorded:
        model(idx)
    for name in ("stm", "ltm"):
        memory = getattr(block, name)
        v = memory.value(u)  # (1, H, T, D)
        y = memory(u) if name == "stm" else memory(u, DELAY)  # (1, T, C)
        expected = (recorded.weights[(0, name)] @ v).transpose(1, 2).reshape(1, T, C)
        torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-4)


def test_a_baseline_records_nothing():
    from mosaics_lab.models.llama import LlamaConfig

    model = build_model(LlamaConfig(vocab_size=V, block_size=T, n_layer=1, n_head=H, n_embd=C)).eval()
    with record_retrievals(model) as recorded:
        model(torch.zeros(1, 4, dtype=torch.long))
    assert recorded.weights == {}
