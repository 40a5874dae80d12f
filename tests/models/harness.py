"""Property harness shared by every model family's tests (v1, v2, baselines).

Each check takes a built model in eval mode (dropout off) and asserts a property the papers' models
must have; the model-specific test files call them with their own configs.
"""

from __future__ import annotations

import torch

from mosaics_lab.models.base import LanguageModel


def assert_causal(model: LanguageModel, vocab_size: int, T: int, j: int, seed: int = 0) -> None:
    """Changing token j never changes logits at positions < j (and does change something at >= j)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, vocab_size, (2, T), generator=g)
    other = idx.clone()
    other[:, j] = (idx[:, j] + 1) % vocab_size
    with torch.no_grad():
        a, b = model(idx), model(other)
    torch.testing.assert_close(a[:, :j], b[:, :j], rtol=0, atol=1e-5)
    assert not torch.allclose(a[:, j:], b[:, j:]), "changing a token changed nothing at or after it"


def assert_batch_invariant(
    model: LanguageModel, vocab_size: int, T: int, batch: int = 3, seed: int = 0
) -> None:
    """A batch gives the same logits as each sequence run alone."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, vocab_size, (batch, T), generator=g)
    with torch.no_grad():
        together = model(idx)
        alone = torch.cat([model(idx[i : i + 1]) for i in range(batch)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)


def assert_runs_at_length(model: LanguageModel, vocab_size: int, T: int) -> None:
    """Forward and backward at length T (e.g. a multiple of block_size) with finite values."""
    model.train()
    idx = torch.randint(0, vocab_size, (1, T))
    logits = model(idx)
    assert logits.shape == (1, T, vocab_size)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx.flatten())
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), f"non-finite gradient in {name}"
    model.zero_grad(set_to_none=True)
    model.eval()


def train_one_step(
    model: LanguageModel, vocab_size: int, T: int, lr: float = 1e-3, seed: int | None = None
) -> float:
    """One AdamW step on random tokens (the same tokens for the same seed); returns the loss."""
    model.train()
    opt = torch.optim.AdamW(model.optim_groups(0.1), lr=lr)
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    idx = torch.randint(0, vocab_size, (2, T), generator=gen)
    loss = torch.nn.functional.cross_entropy(model(idx)[:, :-1].flatten(0, 1), idx[:, 1:].flatten())
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    assert torch.isfinite(loss)
    return float(loss)


def assert_learns(model: LanguageModel, vocab_size: int, T: int, steps: int = 8, lr: float = 3e-3) -> None:
    """A few AdamW steps on one repeated batch lower its loss, and every parameter moves: the model
    builds, is differentiable end to end, and its optimiser groups hold all of it."""
    torch.manual_seed(0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = [train_one_step(model, vocab_size, T, lr=lr, seed=0) for _ in range(steps)]
    assert losses[-1] < 0.9 * losses[0], f"loss did not fall on a repeated batch: {losses}"
    for name, p in model.named_parameters():
        assert not torch.equal(p.detach(), before[name]), f"{name} did not change in {steps} steps"
