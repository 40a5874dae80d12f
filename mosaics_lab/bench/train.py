"""Training-step speed and memory of the four architectures, each mosaic against its
parameter-matched Transformer, and the linear-in-T scaling of mosaic_v2's short-term memory (the document
mask's cost: bench/mask.py).

Shape letters: B batch (sequences per step), T sequence length, d width, L layers.

What a "step" is: forward, next-token loss, backward, gradient clipping at 1.0 and an AdamW step,
on the model as training builds it (`LanguageModelModule.configure_model`: per-block
`torch.compile` when asked) with training's own optimiser (`build_optimizer`: AdamW over the
model's decay / no-decay groups), on random tokens. Float32 on CPU; bf16 autocast on CUDA (what
`train.precision: auto` picks there).

Pairs (`PAIRS`): mosaic_v1 against gpt2 and mosaic_v2 against llama, the baseline's d_ff chosen
so that its parameter count is within 2 % of the mosaic's (the same rule as
`match_params_of`). Both models of a pair live in one process and are timed in alternation:
each round times `steps` steps of one, then of the other, so drifts in machine load hit both
alike; each model's figure is its median over rounds, the ratio the median of per-round ratios.
Every pair and shape uses the same tokens per step (B * T).

Memory ("peak_mib"), one method per device, stated in every result:
- CPU ("saved-tensors"): parameters + gradients + AdamW's two moments (16 bytes per float32
  parameter) + the bytes autograd keeps between forward and backward, recorded with
  `saved_tensors_hooks` exactly as `bench/ops.py` does (every storage counted once). This is what
  grows with T; transient buffers freed inside the forward are not included.
- CUDA ("max-allocated"): the rise of `torch.cuda.max_memory_allocated` over one forward +
  backward (activations, gradients and transients: the real peak) plus the weights and AdamW
  moments the model holds between steps (12 bytes per parameter).

FLOPs: `torch.utils.flop_counter.FlopCounterMode` over one forward + backward of the same model
(it counts causal SDPA as the full T x T product, as most MFU reports do). MFU on CUDA divides the
achieved FLOP/s by `PEAK_FLOPS` (H100 SXM bf16 dense, 989 TFLOP/s) when the device is an H100 or
H200; other GPUs report FLOP/s and no MFU.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mosaics_lab.analysis.tables import markdown_table
from mosaics_lab.config.schema import DistConfig, Recipe, TrainConfig
from mosaics_lab.models import config_class
from mosaics_lab.models.base import ModelConfig
from mosaics_lab.training.matching import count_params, fit_to_param_count
from mosaics_lab.training.module import LanguageModelModule, lm_loss
from mosaics_lab.training.optim import build_optimizer

__all__ = [
    "PAIRS",
    "Shape",
    "bench_pairs",
    "bench_stm_scaling",
    "format_pairs",
    "format_scaling",
]

VOCAB = 257  # the byte tokenizer's (256 bytes + end of text)
PEAK_FLOPS = 989e12  # H100 SXM, bf16 dense tensor cores
_MIB = 2**20
_STATE_BYTES_PER_PARAM = 16  # float32 weight + gradient + AdamW exp_avg + exp_avg_sq

# mosaic -> its parameter-matched Transformer baseline
PAIRS = (("mosaic_v1", "gpt2"), ("mosaic_v2", "llama"))


@dataclass(frozen=True)
class Shape:
    """One benchmark shape: width d, depth L, heads, sequence length T, sequences per step B."""

    n_embd: int
    n_layer: int
    n_head: int
    T: int
    B: int

    @property
    def tokens(self) -> int:
        return self.B * self.T


# Per device and mode: {pair index: shapes}. CPU: issue 3 asks for v1 at T 512 / 2048, issue 4 for
# v2 at T 1024 / 4096, all at 4096 tokens per step. CUDA: GPT-2 small at T 1024 / 4096.
def default_shapes(device: str, quick: bool) -> dict[tuple[str, str], list[Shape]]:
    if quick:
        tiny = [Shape(64, 2, 2, 128, 2), Shape(64, 2, 2, 256, 1)]
        return {pair: tiny for pair in PAIRS}
    if device == "cuda":
        small = [Shape(768, 12, 12, 1024, 16), Shape(768, 12, 12, 4096, 4)]
        return {pair: small for pair in PAIRS}
    # d 256, and the tiny recipes' width d 128 (issue 13 asks for the ratios at both shapes).
    return {
        PAIRS[0]: [Shape(256, 4, 4, 512, 8), Shape(256, 4, 4, 2048, 2), Shape(128, 4, 4, 2048, 2)],
        PAIRS[1]: [Shape(256, 4, 4, 1024, 4), Shape(256, 4, 4, 4096, 1), Shape(128, 4, 4, 4096, 1)],
    }


def model_config(arch: str, shape: Shape, **extra: Any) -> ModelConfig:
    return config_class(arch)(
        arch=arch,
        vocab_size=VOCAB,
        block_size=shape.T,
        n_layer=shape.n_layer,
        n_head=shape.n_head,
        n_embd=shape.n_embd,
        dropout=0.0,
        **extra,
    )


def matched_baseline(baseline: ModelConfig, target_params: int) -> ModelConfig:
    """`baseline` with d_ff set so that its parameter count is within TOLERANCE of target_params
    (the matcher `match_params_of` uses, on a config instead of a recipe file)."""
    return fit_to_param_count(baseline, target_params)


class Trainee:
    """A model, its optimiser and a fixed batch, set up as training sets them up."""

    def __init__(self, cfg: ModelConfig, shape: Shape, device: torch.device, compile: bool) -> None:
        torch.manual_seed(0)
        recipe = Recipe(
            name=f"bench-{cfg.arch}",
            model=cfg,
            train=TrainConfig(max_steps=1_000, warmup_steps=0, grad_clip=1.0),
            dist=DistConfig(compile=compile),
        )
        module = LanguageModelModule(recipe, total_steps=1_000)
        module.configure_model()  # the per-block compile, as in training (no FSDP: no trainer)
        self.model = module.model.to(device).train()
        self.opt, _ = build_optimizer(self.model, recipe.train, 1_000)
        self.arch, self.cfg, self.shape, self.device, self.compiled = cfg.arch, cfg, shape, device, compile
        self.params = self.model.num_params()
        gen = torch.Generator().manual_seed(1)
        tokens = torch.randint(VOCAB - 1, (shape.B, shape.T + 1), generator=gen).to(device)
        self.x, self.y = tokens[:, :-1], tokens[:, 1:]
        self.autocast = device.type == "cuda"
        self.doc_ids: torch.Tensor | None = None  # (B, T) for a document-masked step, else None

    def loss(self) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return lm_loss(self.model(self.x, self.doc_ids), self.y)

    def step(self) -> torch.Tensor:
        """One training step; returns the loss as a device tensor, so that timed steps never wait for
        the device (reading it with float() would sync every step)."""
        loss = self.loss()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.detach()

    def timed_steps(self, n: int) -> float:
        """Seconds for n steps (device synchronised)."""
        _sync(self.device)
        start = time.perf_counter()
        for _ in range(n):
            self.step()
        _sync(self.device)
        return time.perf_counter() - start

    def flops_per_step(self) -> float:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False, custom_mapping=_cpu_sdpa_flop_formulas())
        with counter:
            self.loss().backward()
        self.opt.zero_grad(set_to_none=True)
        return float(counter.get_total_flops())

    def peak_mib(self) -> tuple[float, str]:
        static = self.params * _STATE_BYTES_PER_PARAM / _MIB
        if self.device.type == "cuda":
            # The rise of the allocator's peak over one forward + backward (activations, gradients,
            # transients) on top of what this model holds between steps: weights and AdamW moments
            # (12 bytes per parameter). Measured as a rise because the pair's other model shares the GPU.
            torch.cuda.synchronize(self.device)
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.loss().backward()
            torch.cuda.synchronize(self.device)
            rise = torch.cuda.max_memory_allocated(self.device) - before
            self.opt.zero_grad(set_to_none=True)
            held = self.params * (_STATE_BYTES_PER_PARAM - 4) / _MIB
            return held + rise / _MIB, "max-allocated"
        storages: dict[int, int] = {}

        # Called by autograd as tensors are saved, compiled blocks included; dynamo must not trace it.
        @torch._dynamo.disable
        def pack(t: torch.Tensor) -> torch.Tensor:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = self.loss()
        loss.backward()
        self.opt.zero_grad(set_to_none=True)
        return static + sum(storages.values()) / _MIB, "saved-tensors"


def _cpu_sdpa_flop_formulas() -> dict:
    """FlopCounterMode knows the CUDA SDPA kernels but not the CPU flash kernel, which every causal or
    unmasked SDPA on CPU dispatches to (attention, the mosaics' kernel regression and persistent
    memories). Same formulas as the CUDA kernels'."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    def forward(query, key, value, *args, out_val=None, **kwargs) -> int:
        return sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out, query, key, value)

    return {
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward,
    }


def count_flops(trainee: Trainee) -> float | None:
    """FLOPs of one forward + backward, or None if they cannot be counted (then no MFU is reported).
    A compiled model is counted through an eager twin (same config, device and precision):
    FlopCounterMode is a dispatch mode, and what it sees inside compiled graphs depends on the torch
    version; the eager model runs the same math."""
    try:
        if not trainee.compiled:
            return trainee.flops_per_step()
        return Trainee(trainee.cfg, trainee.shape, trainee.device, compile=False).flops_per_step()
    except Exception as exc:  # a benchmark row without FLOPs beats no row
        warnings.warn(f"{trainee.arch}: FLOPs not counted ({type(exc).__name__}: {exc})", stacklevel=2)
        return None


def _fresh_compile_cache(compile: bool) -> None:
    """Each case starts from an empty compile cache, as a training process does. Otherwise the
    blocks of earlier cases (same code, other shapes and modules) fill dynamo's per-function cache,
    later cases hit its recompile limit and run partly uncompiled (measured 1.2x to 2.6x slower on CPU)."""
    if compile:
        torch._dynamo.reset()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gpu_peak_flops(device: torch.device) -> float | None:
    # H200 is the same GH100 compute die as the H100 SXM (more, faster memory): same peak.
    if device.type == "cuda" and any(n in torch.cuda.get_device_name(device) for n in ("H100", "H200")):
        return PEAK_FLOPS
    return None


def _check_learns(trainee: Trainee) -> None:
    """A model that does not build, step or lower its loss on a repeated batch is not worth timing."""
    first = float(trainee.step())
    for _ in range(2):
        last = float(trainee.step())
    if not (torch.isfinite(torch.tensor([first, last])).all() and last < first):
        raise RuntimeError(f"{trainee.arch}: loss {first:.4f} -> {last:.4f} over 3 steps on one batch")


def bench_pair(
    mosaic: str,
    baseline: str,
    shape: Shape,
    device: torch.device,
    compile: bool,
    rounds: int,
    steps: int,
    log: Callable[[str], None] = lambda s: None,
) -> list[dict]:
    """Two rows (mosaic, matched baseline) at one shape, timed in alternation; see the module doc."""
    mosaic_cfg = model_config(mosaic, shape)
    base_cfg = matched_baseline(model_config(baseline, shape), count_params(mosaic_cfg))
    _fresh_compile_cache(compile)
    runs = [Trainee(cfg, shape, device, compile) for cfg in (mosaic_cfg, base_cfg)]
    for t in runs:
        log(f"  {t.arch} T={shape.T}: check + warm-up")
        _check_learns(t)  # also the warm-up (compilation, allocator, caches)
    seconds: list[list[float]] = [[], []]
    for r in range(rounds):
        order = runs if r % 2 == 0 else runs[::-1]  # neither model always goes first
        for t in order:
            seconds[runs.index(t)].append(t.timed_steps(steps) / steps)
    # mosaic tokens/s over baseline tokens/s, i.e. baseline seconds over mosaic seconds, per round
    ratios = [base_s / mosaic_s for mosaic_s, base_s in zip(seconds[0], seconds[1])]
    peak_flops = _gpu_peak_flops(device)
    rows = []
    for i, t in enumerate(runs):
        sec = statistics.median(seconds[i])
        flops = count_flops(t)
        mib, method = t.peak_mib()
        rows.append(
            {
                "arch": t.arch,
                "vs": runs[1 - i].arch,
                "d": shape.n_embd,
                "layers": shape.n_layer,
                "heads": shape.n_head,
                "T": shape.T,
                "B": shape.B,
                "params": t.params,
                "d_ff": getattr(t.cfg, "d_ff", None),
                "ms_per_step": round(sec * 1e3, 2),
                "tokens_per_sec": round(shape.tokens / sec, 1),
                "step_seconds": [round(s, 4) for s in seconds[i]],
                "gflop_per_step": None if flops is None else round(flops / 1e9, 2),
                "tflops_per_sec": None if flops is None else round(flops / sec / 1e12, 4),
                "mfu": None if peak_flops is None or flops is None else round(flops / sec / peak_flops, 4),
                "peak_mib": round(mib, 1),
                "mem_method": method,
                # tokens/s relative to the pair's baseline (median of per-round ratios)
                "ratio_vs_baseline": round(statistics.median(ratios), 3) if i == 0 else 1.0,
                "ratio_per_round": [round(x, 3) for x in ratios] if i == 0 else None,
                "rounds": rounds,
                "steps_per_round": steps,
                "compile": compile,
                "device": str(device),
            }
        )
    return rows


def bench_pairs(
    device: torch.device,
    quick: bool,
    compile: bool,
    shapes: dict[tuple[str, str], list[Shape]] | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> list[dict]:
    shapes = shapes or default_shapes(device.type, quick)
    rounds, steps = (1, 1) if quick else (5, 2)
    rows = []
    for (mosaic, baseline), pair_shapes in shapes.items():
        for shape in pair_shapes:
            log(f"{mosaic} vs {baseline} at T={shape.T}")
            rows += bench_pair(mosaic, baseline, shape, device, compile, rounds, steps, log)
    return rows


def bench_stm_scaling(
    device: torch.device,
    quick: bool,
    compile: bool,
    lengths: Sequence[int] | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> list[dict]:
    """mosaic_v2 with `memories: stm_only` (window 256) at growing T, one sequence per step: time and
    memory per token should stay flat (O(T h), no T x T anywhere)."""
    if lengths is None:
        lengths = (256, 1024) if quick else (1024, 4096, 16384)
    d, layers, heads = (64, 2, 2) if quick else ((768, 12, 12) if device.type == "cuda" else (256, 4, 4))
    repeats = 1 if quick else 3
    rows = []
    for T in lengths:
        log(f"mosaic_v2 stm_only at T={T}")
        shape = Shape(d, layers, heads, T, 1)
        _fresh_compile_cache(compile)
        t = Trainee(model_config("mosaic_v2", shape, memories="stm_only"), shape, device, compile)
        t.step()  # warm-up
        sec = statistics.median(t.timed_steps(1) for _ in range(repeats))
        mib, method = t.peak_mib()
        rows.append(
            {
                "arch": "mosaic_v2",
                "memories": "stm_only",
                "stm_window": t.cfg.stm_window,
                "d": d,
                "layers": layers,
                "T": T,
                "B": 1,
                "ms_per_step": round(sec * 1e3, 2),
                "us_per_token": round(sec / T * 1e6, 2),
                "peak_mib": round(mib, 1),
                "kib_per_token": round(mib * 1024 / T, 2),
                "mem_method": method,
                "compile": compile,
                "device": str(device),
            }
        )
    return rows


def format_pairs(rows: Sequence[dict]) -> str:
    table = [
        {
            "arch": r["arch"],
            "vs": r["vs"],
            "d": r["d"],
            "T": r["T"],
            "B": r["B"],
            "params": f"{r['params']:,}",
            "d_ff": r["d_ff"],
            "ms/step": f"{r['ms_per_step']:.1f}",
            "tokens/s": f"{r['tokens_per_sec']:,.0f}",
            "ratio vs baseline": f"{r['ratio_vs_baseline']:.3f}x"
            if r["arch"].startswith("mosaic")
            else "(baseline)",
            "GFLOP/step": None if r["gflop_per_step"] is None else f"{r['gflop_per_step']:.1f}",
            "TFLOP/s": None if r["tflops_per_sec"] is None else f"{r['tflops_per_sec']:.3f}",
            "MFU": None if r["mfu"] is None else f"{100 * r['mfu']:.1f}%",
            "peak MiB": f"{r['peak_mib']:.0f}",
        }
        for r in rows
    ]
    return markdown_table(table)


def format_scaling(rows: Sequence[dict]) -> str:
    table = [
        {
            "arch": r["arch"],
            "memories": r["memories"],
            "T": r["T"],
            "ms/step": f"{r['ms_per_step']:.1f}",
            "us/token": f"{r['us_per_token']:.1f}",
            "peak MiB": f"{r['peak_mib']:.0f}",
            "KiB/token": f"{r['kib_per_token']:.1f}",
        }
        for r in rows
    ]
    return markdown_table(table)
