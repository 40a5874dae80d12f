"""Opt-in read-out of a memory mosaic's retrieval weights: which stored pairs each query reads.

    with record_retrievals(model) as recorded:
        model(idx)
    recorded.weights[(0, "stm")]        # (B, H, T, T): [query t, pair i], rows sum to 1 over visible pairs

While the block is open, a forward hook on every memory of every block that can explain itself (a
module with `retrieval_weights`, taking the same arguments as its forward: mosaic_v1's `cmem` and
`pmem`, mosaic_v2's `stm` and `ltm`) recomputes that memory's weights from its own q and k on the
plain path (`ops.kernel_regression_weights`) and stores them on the recorder, keyed by (layer, the
memory's attribute name in its block). The fast kernels never materialise the weights, and outside
the block no hook exists, so training pays nothing. The recorder is the only state: nothing is set
on the model, nothing global. Weights are computed without dropout (put the model in eval mode to
see what it reads in eval); with activation checkpointing a recomputed forward would record again.

Shape letters: B batch, H heads, T sequence length, P persistent banks, S pairs per bank.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class RetrievalRecord:
    """What one forward read. weights[(layer, memory)]: (B, H, T, T) for a contextual memory
    [query t, pair i], (B, H, T, P S) for a persistent memory [query t, learned pair j]; float32,
    on the model's device, no gradient. Later forwards overwrite earlier ones."""

    weights: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)

    def memories(self) -> list[str]:
        """The memory names recorded, in first-seen order (e.g. ['stm', 'ltm'])."""
        return list(dict.fromkeys(name for _, name in self.weights))

    def layers(self) -> list[int]:
        return sorted({layer for layer, _ in self.weights})


def retrieving_memories(model: nn.Module) -> list[tuple[int, str, nn.Module]]:
    """(layer, name, module) of every memory in `model.blocks` that has `retrieval_weights`."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        return []
    return [
        (layer, name, child)
        for layer, block in enumerate(blocks)
        for name, child in block.named_children()
        if callable(getattr(child, "retrieval_weights", None))
    ]


@contextlib.contextmanager
def record_retrievals(model: nn.Module) -> Iterator[RetrievalRecord]:
    """Record the retrieval weights of every forward of `model` inside the block (see the module
    docstring). A model without such memories (gpt2, llama) records nothing."""
    record = RetrievalRecord()
    handles = []

    def hook_for(layer: int, name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
            with torch.no_grad():
                record.weights[(layer, name)] = module.retrieval_weights(*args, **kwargs).detach()

        return hook

    try:
        for layer, name, module in retrieving_memories(model):
            handles.append(module.register_forward_hook(hook_for(layer, name), with_kwargs=True))
        yield record
    finally:
        for handle in handles:
            handle.remove()
