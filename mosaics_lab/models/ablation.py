"""Remove a contextual memory from a trained model for the duration of a block, without retraining:

    with ablated(model, "ltm"):
        logits = model(idx)        # every block's LTM contributes exactly zero

The v2 paper's ablation ("Memory Mosaics at scale", MODELS.md section 4: removing the long-term
memory after training leaves the persistent-knowledge benchmarks unchanged but collapses long-context
QA). MODELS.md's v2 block reads both contextual memories through one projection,

    x = x + W_o [ STM(u) ; LTM(u) ]

so "remove the LTM" is read as "its contribution is zero": each block puts zeros where the LTM's
output would enter W_o (x = x + W_o [ STM(u) ; 0 ]), and the LTM is not computed at all. That is
exactly the model with the LTM's columns of W_o set to zero; the STM, the persistent memory and every
weight are untouched. ``stm`` is the same with the roles swapped.

Why a context manager that flags the blocks rather than a config override: a config field (say
``memories: stm_only``) builds another model, whose W_o is C x C instead of C x 2C, so the trained
weights no longer load; and a field that only zeroes an output would be a config key that training
never reads. The flag (``Block.zeroed_memories``) is set here, on every block, before any forward, and
restored when the block ends, even on an error: nothing is set inside ``forward`` and nothing is
global, so a model outside the block (training, another evaluation) is the full model.

A block says which memories it can do without by its ``ablatable_memories``; a model whose blocks
have none (gpt2, llama, mosaic_v1) is refused with the reason, as is a memory the model was built
without (``memories: stm_only`` has no LTM to remove).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

ABLATABLE_MEMORIES = ("stm", "ltm")


def ablatable_blocks(model: nn.Module, memory: str) -> list[nn.Module]:
    """The blocks of ``model`` whose ``memory`` can be removed; ValueError saying why when there are
    none (an unknown memory, a model without stm / ltm, a model built without that memory)."""
    if memory not in ABLATABLE_MEMORIES:
        raise ValueError(
            f"unknown memory {memory!r} to remove; the memories are: {', '.join(ABLATABLE_MEMORIES)}"
        )
    blocks = [b for b in getattr(model, "blocks", []) if memory in getattr(b, "ablatable_memories", ())]
    if not blocks:
        raise ValueError(
            f"{type(model).__name__} has no memory to remove: only mosaic_v2's blocks have separate "
            f"{' and '.join(ABLATABLE_MEMORIES)} memories"
        )
    if all(getattr(b, memory) is None for b in blocks):
        raise ValueError(f"the model has no {memory}: it was built without one (model.memories)")
    return blocks


@contextlib.contextmanager
def ablated(model: nn.Module, memory: str | None) -> Iterator[nn.Module]:
    """``model`` with ``memory`` ("stm" or "ltm") contributing zero in every block while the block is
    open (see the module docstring); ``None`` is the model unchanged. Yields the model itself."""
    if memory is None:
        yield model
        return
    blocks = ablatable_blocks(model, memory)
    before = [block.zeroed_memories for block in blocks]
    try:
        for block in blocks:
            block.zeroed_memories = block.zeroed_memories | {memory}
        yield model
    finally:
        for block, flags in zip(blocks, before):
            block.zeroed_memories = flags
