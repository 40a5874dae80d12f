"""``mosaics-lab inspect RUN_OR_CHECKPOINT --prompt TEXT | --task TASK [--layer L] [--memory M]``: a
look inside a trained memory mosaic, as figures for a paper.

Writes, under ``<run>/inspect/`` (or ``--out``), and as TensorBoard images (``inspect/<figure>``) in
the run:

- ``retrievals_<memory>_layer<L>.png``: the retrieval weights of each head over the prompt, query
  position t (rows) against stored pair i (columns), tokens on the axes (models.retrievals; a
  persistent memory's columns are its learned pairs). For a task prompt, a red ring marks, in each
  answered row, the pairs whose value peeks at the correct answer (input_ids[i + 1] = label[t]): a
  head doing associative recall puts its weight there.
- ``bandwidths.png``: the learned bandwidths per layer: beta(n) = beta1 n^alpha + beta0 per head over
  n = 1..T for mosaic_v2's STM and LTM (constant in n for `bandwidth: fixed`), beta per head for
  mosaic_v1's contextual (and persistent) memory.
- ``key_time_constants.png``: the key extractors' effective averaging length per head, 1 / (1 -
  lambda) with lambda the decay: one value for a constant decay (mosaic_v1, v2's leaky/gate_only),
  its distribution over the prompt's positions for an input-dependent one (v2's gated keys).

Shape letters: B batch (1 here), H heads, T prompt length.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure

from mosaics_lab.data.tasks.base import IGNORE_INDEX

INSPECT_DIR = "inspect"
MEMORY_NAMES = ("stm", "ltm", "cmem", "pmem")
TOKEN_TICKS_MAX = 48  # label every token up to this length; beyond it, every n-th


class InspectError(ValueError):
    """An inspection that cannot run as asked; the message says what to change."""


@dataclass
class Prompt:
    """The tokens inspected, their labels for the axes, and where the answers live (task prompts):
    answers[t] = the pairs i whose value peeks at the correct answer of query t."""

    ids: list[int]
    labels: list[str]
    answers: dict[int, list[int]] = field(default_factory=dict)
    source: str = ""


def answer_pairs(input_ids: np.ndarray, labels: np.ndarray) -> dict[int, list[int]]:
    """For every labelled position t, the pairs i < t whose value peeks at the target (a pair's value
    reads token i + 1), i.e. where an associative recall should read."""
    out = {}
    for t in np.flatnonzero(labels != IGNORE_INDEX):
        target = labels[t]
        out[int(t)] = [int(i) for i in range(t) if input_ids[i + 1] == target]
    return out


def _token_label(text: str) -> str:
    return {"\n": "\\n", " ": "␣", "\t": "\\t"}.get(text, text) or "∅"


def prompt_from_text(recipe: Any, text: str) -> Prompt:
    from mosaics_lab.data import load_tokenizer

    try:
        tokenizer = load_tokenizer(recipe.data.path)
    except (FileNotFoundError, ValueError) as exc:
        raise InspectError(
            f"--prompt needs the run's tokenizer, from data.path {recipe.data.path!r}: {exc}; "
            "prepare the data again, or use --task for a run trained on a synthetic task"
        ) from exc
    ids = tokenizer.encode(text)
    if not ids:
        raise InspectError("--prompt is empty: give some text")
    return Prompt(ids, [_token_label(tokenizer.decode([i])) for i in ids], source=f"prompt {text!r}")


def prompt_from_task(recipe: Any, task: str, example: int, seed: int | None) -> Prompt:
    from mosaics_lab.evaluation.runner import task_from_recipe

    task_cfg, _ = task_from_recipe(recipe, task, {})
    seed = recipe.data.seed if seed is None else seed
    ex = next(itertools.islice(task_cfg.examples("test", example + 1, seed), example, None))
    ids = ex.input_ids.tolist()
    return Prompt(
        ids,
        [str(i) for i in ids],
        answer_pairs(ex.input_ids, ex.labels),
        source=f"{task} test example {example} (seed {seed})",
    )


# --- reading the model -------------------------------------------------------------------------------


def _log_decays(key: torch.nn.Module, u: torch.Tensor) -> torch.Tensor | None:
    """log lambda of a key extractor: (H,) for a constant decay, (T, H) for an input-dependent one
    (u: (1, T, C), the extractor's input), None for keys without an average."""
    if callable(getattr(key, "log_decay", None)):  # mosaic_v1
        return key.log_decay()
    if getattr(key, "decay", None) is not None:  # mosaic_v2 gated / decay_only: -|w_lambda . u_t|
        return -key.decay(u)[0].float().abs()
    if getattr(key, "theta", None) is not None:  # mosaic_v2 leaky / gate_only: -10 |theta|
        return -10.0 * key.theta.float().abs()
    return None


def averaging_length(log_decay: torch.Tensor) -> np.ndarray:
    """1 / (1 - lambda): the number of past steps a leaky average effectively sums over."""
    lam = torch.exp(log_decay.double()).clamp(max=1 - 1e-12)
    return (1.0 / (1.0 - lam)).cpu().numpy()


def _key_inputs(model: torch.nn.Module, idx: torch.Tensor, doc_ids: torch.Tensor | None) -> dict:
    """The input of every contextual memory's key extractor over the prompt: {(layer, name): u}."""
    from mosaics_lab.models.retrievals import retrieving_memories

    seen: dict[tuple[int, str], torch.Tensor] = {}
    handles = []
    for layer, name, memory in retrieving_memories(model):
        key = getattr(memory, "key", None)
        if key is not None:
            hook = lambda m, args, out, where=(layer, name): seen.__setitem__(where, args[0].detach())  # noqa: E731
            handles.append(key.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(idx, doc_ids)
    finally:
        for h in handles:
            h.remove()
    return seen


# --- figures -------------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _token_ticks(ax: Any, labels: list[str], axis: str) -> None:
    n = len(labels)
    step = 1 if n <= TOKEN_TICKS_MAX else math.ceil(n / TOKEN_TICKS_MAX)
    ticks = list(range(0, n, step))
    shown = [labels[i] for i in ticks]
    fontsize = 7 if step == 1 else 6
    if axis == "x":
        ax.set_xticks(ticks)
        ax.set_xticklabels(shown, fontsize=fontsize, rotation=90)
    else:
        ax.set_yticks(ticks)
        ax.set_yticklabels(shown, fontsize=fontsize)


def plot_retrievals(weights: torch.Tensor, prompt: Prompt, title: str, persistent: bool) -> Figure:
    """One panel per head: weights (H, T, T) or (H, T, S) for a persistent memory."""
    H = weights.shape[0]
    cols = min(H, 4)
    rows = math.ceil(H / cols)
    T = len(prompt.ids)
    side = 3.2 if T <= 24 else 4.2
    fig = _figure(side * cols + 0.8, side * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False)
    image = None
    for h in range(rows * cols):
        ax = axes[h // cols][h % cols]
        if h >= H:
            ax.set_axis_off()
            continue
        image = ax.imshow(
            weights[h].cpu().numpy(),
            cmap="viridis",
            norm=PowerNorm(0.5, 0, 1),
            aspect="auto",
            interpolation="nearest",
        )
        ax.set_title(f"head {h}", fontsize=9)
        _token_ticks(ax, prompt.labels, "y")
        if persistent:
            ax.set_xlabel("learned pair", fontsize=8)
        else:
            _token_ticks(ax, prompt.labels, "x")
            ax.set_xlabel("pair i (key token)", fontsize=8)
            marks = [(i, t) for t, pairs in prompt.answers.items() for i in pairs]
            if marks:
                xs, ys = zip(*marks)
                ax.scatter(
                    xs, ys, s=28, facecolors="none", edgecolors="red", linewidths=1.0, label="answer's pair"
                )
                ax.legend(fontsize=6, loc="lower left")
        if h % cols == 0:
            ax.set_ylabel("query t", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="retrieval weight")
    return fig


def _bandwidth_curves(memory: torch.nn.Module, T: int) -> np.ndarray | None:
    """beta(n) for n = 1..T per head, (H, T), from a mosaic_v2 memory's bandwidth module."""
    bandwidth = getattr(memory, "bandwidth", None)
    if bandwidth is None:
        return None
    n = torch.arange(1, T + 1, dtype=torch.float32)
    return bandwidth(n).detach().double().cpu().numpy()


def plot_bandwidths(memories: list[tuple[int, str, Any]], T: int, title: str) -> Figure:
    """A row per layer, a column per memory: beta(n) curves (v2) or beta per head bars (v1)."""
    layers = sorted({layer for layer, _, _ in memories})
    names = list(dict.fromkeys(name for _, name, _ in memories))
    fig = _figure(4.0 * len(names) + 0.5, 2.6 * len(layers) + 0.6)
    axes = fig.subplots(len(layers), len(names), squeeze=False)
    for layer, name, memory in memories:
        ax = axes[layers.index(layer)][names.index(name)]
        curves = _bandwidth_curves(memory, T)
        if curves is not None:
            n = np.arange(1, T + 1)
            for h, curve in enumerate(curves):
                ax.plot(n, curve, label=f"h{h}", linewidth=1.2)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("n (pairs held)", fontsize=8)
            ax.set_ylabel("beta(n)", fontsize=8)
        else:
            beta = memory.bandwidths().detach().double().cpu().numpy()
            ax.bar([f"h{h}" for h in range(len(beta))], beta, color="tab:blue")
            ax.set_yscale("log")
            ax.set_ylabel("beta", fontsize=8)
        ax.set_title(f"layer {layer} {name}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        if curves is not None and layer == layers[0]:
            ax.legend(fontsize=6, ncol=2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_time_constants(lengths: dict[tuple[int, str], np.ndarray], title: str) -> Figure:
    """Effective averaging length per head: bars (constant decay) or a box per head (over the prompt)."""
    layers = sorted({layer for layer, _ in lengths})
    names = list(dict.fromkeys(name for _, name in lengths))
    fig = _figure(4.0 * len(names) + 0.5, 2.4 * len(layers) + 0.6)
    axes = fig.subplots(len(layers), len(names), squeeze=False)
    for (layer, name), value in lengths.items():
        ax = axes[layers.index(layer)][names.index(name)]
        if value.ndim == 1:
            ax.bar([f"h{h}" for h in range(len(value))], value, color="tab:green")
        else:  # (T, H): one distribution per head over the prompt's positions
            ax.boxplot([value[:, h] for h in range(value.shape[1])], showfliers=False)
            ax.set_xticks(range(1, value.shape[1] + 1))
            ax.set_xticklabels([f"h{h}" for h in range(value.shape[1])])
        ax.set_yscale("log")
        ax.set_ylabel("1 / (1 - decay)", fontsize=8)
        ax.set_title(f"layer {layer} {name} keys", fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def figure_rgb(fig: Figure) -> np.ndarray:
    """(H, W, 3) uint8 pixels of a figure, for TensorBoard's add_image."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


# --- the entry point -------------------------------------------------------------------------------------


def parse_window(text: str | None, T: int) -> tuple[int, int]:
    """'--window A:B' -> positions A..B-1 of the prompt (either side may be empty); None = all."""
    if text is None:
        return 0, T
    start, sep, end = text.partition(":")
    try:
        lo = int(start) if start.strip() else 0
        hi = int(end) if end.strip() else T
    except ValueError:
        lo = hi = -1
    if not sep or not 0 <= lo < hi <= T:
        raise InspectError(
            f"--window must be START:END with 0 <= START < END <= {T} (the prompt's length), got {text!r}"
        )
    return lo, hi


def crop(prompt: Prompt, lo: int, hi: int) -> Prompt:
    """The prompt's positions lo..hi-1 (answers renumbered), for zooming into a long prompt."""
    answers = {
        t - lo: [i - lo for i in pairs if lo <= i < hi] for t, pairs in prompt.answers.items() if lo <= t < hi
    }
    return Prompt(prompt.ids[lo:hi], prompt.labels[lo:hi], answers, prompt.source)


@dataclass
class InspectOptions:
    prompt: str | None = None
    task: str | None = None
    layer: int | None = None
    memory: str | None = None
    example: int = 0
    seed: int | None = None
    window: str | None = None  # "A:B": plot the retrievals of positions A..B-1 only
    which: str = "last"
    out_dir: str | Path | None = None
    tensorboard: bool = True


def inspect_run(path: str | Path, options: InspectOptions) -> dict[str, Path]:
    """Write the figures of the module docstring for the run (or checkpoint) at ``path``; return
    {figure name: PNG path}."""
    from mosaics_lab.models.retrievals import record_retrievals, retrieving_memories
    from mosaics_lab.ops import document_ids
    from mosaics_lab.training.checkpoint import find_checkpoint, load_trained

    if (options.prompt is None) == (options.task is None):
        raise InspectError("give exactly one of --prompt TEXT or --task TASK")
    if options.memory is not None and options.memory not in MEMORY_NAMES:
        raise InspectError(f"--memory must be one of {', '.join(MEMORY_NAMES)}, got {options.memory!r}")
    if options.example < 0:
        raise InspectError(f"--example must be >= 0, got {options.example}")
    path = Path(path)
    ckpt = find_checkpoint(path, options.which)
    recipe, model = load_trained(ckpt)
    memories = retrieving_memories(model)
    if not memories:
        raise InspectError(
            f"{recipe.model.arch} has no associative memories to inspect; inspect reads the memory "
            "mosaics (mosaic_v1, mosaic_v2)"
        )
    have = list(dict.fromkeys(name for _, name, _ in memories))
    if options.memory is not None and options.memory not in have:
        raise InspectError(f"--memory {options.memory}: this {recipe.model.arch} has {', '.join(have)}")
    n_layer = len(model.blocks)
    if options.layer is not None and not 0 <= options.layer < n_layer:
        raise InspectError(f"--layer must be in 0..{n_layer - 1}, got {options.layer}")
    chosen = [
        (layer, name, m)
        for layer, name, m in memories
        if (options.layer is None or layer == options.layer) and (options.memory in (None, name))
    ]

    if options.task is not None:
        prompt = prompt_from_task(recipe, options.task, options.example, options.seed)
    else:
        prompt = prompt_from_text(recipe, options.prompt)
    lo, hi = parse_window(options.window, len(prompt.ids))
    idx = torch.tensor([prompt.ids], dtype=torch.long)
    doc_ids = None
    if recipe.data.document_mask:  # seen as it trained: each position reads only its own document
        from mosaics_lab.data import load_tokenizer

        doc_ids = document_ids(idx, load_tokenizer(recipe.data.path).eot_id)
    with torch.no_grad(), record_retrievals(model) as recorded:
        model(idx, doc_ids)

    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    out_dir = Path(options.out_dir) if options.out_dir is not None else run_dir / INSPECT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    head = f"{recipe.name} ({recipe.model.arch})"
    figures: dict[str, Figure] = {}
    shown = crop(prompt, lo, hi)
    if (lo, hi) != (0, len(prompt.ids)):
        shown.source += f", positions {lo}..{hi - 1}"
    for layer, name, _ in chosen:
        weights = recorded.weights[(layer, name)][0, :, lo:hi]  # (H, rows, pairs)
        figures[f"retrievals_{name}_layer{layer}"] = plot_retrievals(
            weights if name == "pmem" else weights[..., lo:hi],
            shown,
            f"{head}: layer {layer} {name} retrieval weights, {shown.source}",
            persistent=name == "pmem",
        )
    contextual = [(layer, name, m) for layer, name, m in chosen if name != "pmem"]
    bandwidth_memories = [
        (layer, name, m)
        for layer, name, m in chosen
        if hasattr(m, "bandwidth") or callable(getattr(m, "bandwidths", None))
    ]
    if bandwidth_memories:
        figures["bandwidths"] = plot_bandwidths(
            bandwidth_memories, recipe.model.block_size, f"{head}: learned bandwidths"
        )
    inputs = _key_inputs(model, idx, doc_ids)
    lengths = {}
    with torch.no_grad():
        for layer, name, memory in contextual:
            log_decay = _log_decays(memory.key, inputs[(layer, name)])
            if log_decay is not None:
                lengths[(layer, name)] = averaging_length(log_decay)
    if lengths:
        figures["key_time_constants"] = plot_time_constants(
            lengths, f"{head}: key averaging length, {prompt.source}"
        )

    written = {}
    for name, fig in figures.items():
        written[name] = out_dir / f"{name}.png"
        fig.savefig(written[name])
    if options.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        from mosaics_lab.evaluation.runner import _global_step
        from mosaics_lab.training.run import tensorboard_dir

        writer = SummaryWriter(log_dir=str(tensorboard_dir(run_dir, recipe)))
        try:
            step = _global_step(ckpt)
            for name, fig in figures.items():
                writer.add_image(f"{INSPECT_DIR}/{name}", figure_rgb(fig), step, dataformats="HWC")
        finally:
            writer.close()
    return written


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="look inside a trained memory mosaic: retrieval weights, bandwidths, key time constants",
        description=__doc__.split("\n\n")[1],
    )
    p.add_argument("run", help="run directory (runs/<name>/<id>) or checkpoint file")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="text to read, with the run's tokenizer")
    what.add_argument(
        "--task", help="a synthetic task (mqar, induction, ...): one test example, answers marked"
    )
    p.add_argument("--example", type=int, default=0, help="--task: which test example (default %(default)s)")
    p.add_argument("--seed", type=int, default=None, help="--task: seed of the examples (default: data.seed)")
    p.add_argument(
        "--window", default=None, metavar="A:B", help="plot the retrievals of positions A..B-1 only (a zoom)"
    )
    p.add_argument("--layer", type=int, default=None, help="one layer (default: all)")
    p.add_argument("--memory", choices=MEMORY_NAMES, default=None, help="one memory (default: all)")
    p.add_argument("--which", choices=("last", "best"), default="last")
    p.add_argument("--out", default=None, help="directory for the PNGs (default: <run>/inspect)")
    p.add_argument("--no-tensorboard", action="store_true", help="write no TensorBoard images")
    p.set_defaults(func=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    options = InspectOptions(
        prompt=args.prompt,
        task=args.task,
        layer=args.layer,
        memory=args.memory,
        example=args.example,
        seed=args.seed,
        window=args.window,
        which=args.which,
        out_dir=args.out,
        tensorboard=not args.no_tensorboard,
    )
    for name, path in inspect_run(args.run, options).items():
        print(f"{name}: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m mosaics_lab.analysis.inspect ...``: the same arguments as ``mosaics-lab inspect``."""
    parser = argparse.ArgumentParser(prog="python -m mosaics_lab.analysis.inspect")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["inspect", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run_inspect(args)
    except ValueError as exc:
        print(f"inspect: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
