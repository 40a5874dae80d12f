"""The document mask in every architecture: a block holding two documents is two separate runs.

Shapes: B batch, T time steps, V vocabulary.
"""

from __future__ import annotations

import pytest
import torch

from mosaics_lab.models import build_model, config_class
from mosaics_lab.ops import document_ids

V, EOT, T, CUT = 41, 40, 40, 17  # document 1 = positions 0..16 (its <|eot|> at 16), document 2 = 17..39

ARCH_EXTRA = {
    "gpt2": {},
    "llama": {"n_kv_head": 2},
    "mosaic_v1": {},
    "mosaic_v2": {"stm_window": 8, "ltm_delay_train": [3, 9], "ltm_delay_eval": 4},
}
ARCHS = list(ARCH_EXTRA)


def build(arch: str, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = config_class(arch)(
        arch=arch,
        vocab_size=V,
        block_size=64,
        n_layer=2,
        n_head=4,
        n_embd=32,
        dropout=0.0,
        **{**ARCH_EXTRA[arch], **extra},
    )
    return build_model(cfg).double().eval()


def two_documents(seed: int = 0) -> torch.Tensor:
    """(2, T) tokens with an <|eot|> at CUT - 1 and nowhere else."""
    idx = torch.randint(0, EOT, (2, T), generator=torch.Generator().manual_seed(seed))
    idx[:, CUT - 1] = EOT
    return idx


@pytest.mark.parametrize("arch", ARCHS)
def test_second_document_ignores_the_first_and_equals_itself_run_alone(arch):
    model = build(arch)
    idx = two_documents()
    doc_ids = document_ids(idx, EOT)
    assert doc_ids[0, CUT - 1] == 0 and doc_ids[0, CUT] == 1  # the <|eot|> belongs to the document it ends
    with torch.no_grad():
        logits = model(idx, doc_ids)
        other = idx.clone()
        other[:, : CUT - 1] = torch.randint(0, EOT, (2, CUT - 1))  # change every token of document 1
        changed = model(other, document_ids(other, EOT))
        alone = model(idx[:, CUT:])
    assert torch.equal(logits[:, CUT:], changed[:, CUT:])
    torch.testing.assert_close(logits[:, CUT:], alone, rtol=0, atol=1e-5)
    # Document 1 is causal anyway: the same as running it alone.
    torch.testing.assert_close(logits[:, :CUT], model(idx[:, :CUT]).detach(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_of_the_second_document_equal_those_of_it_run_alone(arch):
    model = build(arch)
    idx = two_documents(1)

    def grads(tokens: torch.Tensor, doc_ids: torch.Tensor | None, start: int) -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        logits = model(tokens, doc_ids)[:, start:]
        (logits * torch.linspace(-1, 1, logits.numel(), dtype=logits.dtype).view_as(logits)).sum().backward()
        return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]

    masked = grads(idx, document_ids(idx, EOT), CUT)
    alone = grads(idx[:, CUT:], None, 0)
    # mosaic_v2 computes its memories in float32 whatever the model dtype (the packed and the alone
    # runs sum in different chunk orders); the others run in float64 end to end.
    tol = 1e-4 if arch == "mosaic_v2" else 1e-9
    for (name, _), g, g_alone in zip(model.named_parameters(), masked, alone):
        rel = ((g - g_alone).norm() / g_alone.norm().clamp_min(1e-30)).item()
        assert rel < tol, f"{name}: relative gradient error {rel:.1e}"


@pytest.mark.parametrize("arch", ARCHS)
def test_a_block_without_eot_gives_exactly_the_unmasked_output(arch):
    model = build(arch)
    idx = torch.randint(0, EOT, (2, T))
    doc_ids = document_ids(idx, EOT)
    assert (doc_ids == 0).all()
    with torch.no_grad():
        assert torch.equal(model(idx, doc_ids), model(idx))


@pytest.mark.parametrize("arch", ARCHS)
def test_document_ids_of_the_wrong_shape_or_dtype_are_a_clear_error(arch):
    model = build(arch)
    idx = torch.randint(0, EOT, (2, T))
    with pytest.raises(ValueError, match=r"doc_ids must have shape \(B, T\)"):
        model(idx, torch.zeros(2, T - 1, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        model(idx, torch.zeros(2, T))


def test_mosaic_v2_training_forward_with_documents_matches_the_document_alone():
    # Training mode: the step's LTM delay, the same for the packed block and the document alone.
    model = build("mosaic_v2").train()
    model.begin_step(5, seed=0)
    idx = two_documents(2)
    with torch.no_grad():
        packed = model(idx, document_ids(idx, EOT))[:, CUT:]
        alone = model(idx[:, CUT:])
    torch.testing.assert_close(packed, alone, rtol=0, atol=1e-5)
