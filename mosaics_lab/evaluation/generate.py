"""``mosaics-lab generate``: sample text from a trained run, with the tokenizer of its data.

No KV cache: every step re-runs the model on the whole context, cropped to ``model.max_context``
when the model has a positional limit (gpt2); a memory mosaic has none. Enough to look at what a
small model learnt.

Shape letters: B batch, T sequence length, V vocabulary.
"""

from __future__ import annotations

import argparse
import math

import torch

from mosaics_lab.models.base import LanguageModel


@torch.no_grad()
def sample(
    model: LanguageModel,
    prompt: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    max_context: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Autoregressive sampling: prompt (B, T) -> (B, T + max_new_tokens). temperature 0 = greedy."""
    idx = prompt
    for _ in range(max_new_tokens):
        context = idx if max_context is None else idx[:, -max_context:]
        logits = model(context)[:, -1, :].float()  # (B, V)
        if temperature <= 0:
            nxt = logits.argmax(dim=-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)
        idx = torch.cat([idx, nxt], dim=1)
    return idx


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="sample text from a trained run")
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("--prompt", default="", help="text to continue (default: start of a document)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--which", choices=("last", "best"), default="last")
    p.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from mosaics_lab.data import load_tokenizer
    from mosaics_lab.training.checkpoint import load_trained

    if args.max_new_tokens < 1 or args.num_samples < 1:
        raise ValueError("--max-new-tokens and --num-samples must be >= 1")
    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1 (1 is greedy), got {args.top_k}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise ValueError(f"--temperature must be a finite number >= 0 (0 is greedy), got {args.temperature}")
    recipe, model = load_trained(args.run, which=args.which)
    tokenizer = load_tokenizer(recipe.data.path)
    ids = tokenizer.encode(args.prompt) if args.prompt else [tokenizer.eot_id]
    prompt = torch.tensor([ids] * args.num_samples, dtype=torch.long)
    out = sample(
        model,
        prompt,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        max_context=model.max_context,
        generator=torch.Generator().manual_seed(args.seed),
    )
    for i, row in enumerate(out.tolist()):
        text = tokenizer.decode([t for t in row[len(ids) :] if t != tokenizer.eot_id])
        print(f"--- sample {i} ---\n{args.prompt}{text}")
    return 0
