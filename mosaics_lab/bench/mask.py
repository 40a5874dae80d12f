"""The cost of ``data.document_mask``: each architecture's training step with and without document
ids, on the same model timed in alternation (bench/train.py's ``Trainee``: the step training takes).
`mosaics-lab bench mask`; the table in BENCHMARKS.md."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import torch

from mosaics_lab.analysis.tables import markdown_table
from mosaics_lab.bench.train import Shape, Trainee, _fresh_compile_cache, model_config

__all__ = ["bench_document_mask", "document_layout", "format_document_mask"]


def document_layout(shape: Shape, doc_len: int, device: torch.device) -> torch.Tensor:
    """doc_ids (B, T): documents of doc_len tokens, each row starting at another offset in its first
    document, so that boundaries fall at different positions in each row."""
    t = torch.arange(shape.T)
    rows = [(t + (37 * b) % doc_len) // doc_len for b in range(shape.B)]
    return torch.stack(rows).to(device)


def bench_document_mask(
    device: torch.device,
    quick: bool,
    compile: bool,
    log: Callable[[str], None] = lambda s: None,
) -> list[dict]:
    """The cost of data.document_mask: each architecture's training step with and without doc_ids
    (documents of `doc_len` tokens), on one model timed in alternation (median of rounds), and the
    memory each keeps for backward."""
    if quick:
        cases, doc_len, rounds, steps = [Shape(64, 2, 2, 128, 2)], 50, 1, 1
    else:
        cases, doc_len, rounds, steps = [Shape(128, 4, 4, 512, 8), Shape(128, 4, 4, 2048, 2)], 200, 5, 2
    rows = []
    for shape in cases:
        for arch in ("gpt2", "llama", "mosaic_v1", "mosaic_v2"):
            log(f"document mask: {arch} at T={shape.T}, documents of {doc_len} tokens")
            _fresh_compile_cache(compile)
            t = Trainee(model_config(arch, shape), shape, device, compile)
            masked = document_layout(shape, doc_len, device)
            seconds: dict[bool, list[float]] = {False: [], True: []}
            mib: dict[bool, float] = {}
            for mask in (False, True):  # warm-up, and memory, of both layouts
                t.doc_ids = masked if mask else None
                t.step()
                mib[mask] = t.peak_mib()[0]
            for r in range(rounds):
                for mask in (False, True) if r % 2 == 0 else (True, False):
                    t.doc_ids = masked if mask else None
                    seconds[mask].append(t.timed_steps(steps) / steps)
            plain, with_mask = (statistics.median(seconds[m]) for m in (False, True))
            rows.append(
                {
                    "arch": arch,
                    "d": shape.n_embd,
                    "layers": shape.n_layer,
                    "T": shape.T,
                    "B": shape.B,
                    "doc_len": doc_len,
                    "ms_per_step": round(plain * 1e3, 2),
                    "ms_per_step_masked": round(with_mask * 1e3, 2),
                    "masked_over_plain": round(with_mask / plain, 3),
                    "peak_mib": round(mib[False], 1),
                    "peak_mib_masked": round(mib[True], 1),
                    "rounds": rounds,
                    "steps_per_round": steps,
                    "compile": compile,
                    "device": str(device),
                }
            )
    return rows


def format_document_mask(rows: Sequence[dict]) -> str:
    table = [
        {
            "arch": r["arch"],
            "T": r["T"],
            "B": r["B"],
            "doc len": r["doc_len"],
            "ms/step": f"{r['ms_per_step']:.1f}",
            "ms/step masked": f"{r['ms_per_step_masked']:.1f}",
            "masked / plain": f"{r['masked_over_plain']:.2f}x",
            "peak MiB": f"{r['peak_mib']:.0f}",
            "peak MiB masked": f"{r['peak_mib_masked']:.0f}",
        }
        for r in rows
    ]
    return markdown_table(table)
