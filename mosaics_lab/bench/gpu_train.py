"""gpu-check parts 3 to 7: training through the real trainer, throughput and MFU, FSDP with a
sharded checkpoint resumed, stm_only scaling, and the host syncs of a training step.

Shape letters: B batch, T sequence length, C width, L layers.

Training goes through `mosaics_lab.training.run.train` with a shipped recipe and `key=value`
overrides, exactly as `mosaics-lab train recipes/<arch>_tiny.yaml k=v ...` (each row records the
equivalent command). The Transformer baselines get the d_ff that matches their mosaic's parameter
count at the same shape (the rule of a recipe's `match_params_of`).
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

from mosaics_lab import constants as C
from mosaics_lab.bench.gpu_common import CheckFailed, Context
from mosaics_lab.bench.host_sync import HostSyncDetector, call_sites
from mosaics_lab.bench.train import PAIRS, VOCAB, Shape, Trainee, bench_pair, model_config
from mosaics_lab.training.matching import count_params
from mosaics_lab.training.module import lm_loss

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
ARCH_RECIPE = {
    "mosaic_v1": "mosaic_v1_tiny.yaml",
    "gpt2": "gpt2_tiny.yaml",
    "mosaic_v2": "mosaic_v2_tiny.yaml",
    "llama": "llama_tiny.yaml",
}
# Resumed FSDP losses vs an uninterrupted run: float32 on CPU is exact up to reduction order; on
# CUDA, bf16 autocast and FlexAttention's atomics make the order vary.
RESUME_TOL = {"cpu": 1e-4, "cuda": 2e-2}


def prepare_data(ctx: Context) -> Path:
    from mosaics_lab.data import prepare_synthetic

    out = ctx.work / "stories"
    if not out.exists():
        prepare_synthetic("stories", out, seed=0, num_tokens=ctx.budget.data_tokens)
    return out


def _overrides(ctx: Context, arch: str, shape: Shape, run_dir: Path, steps: int) -> list[str]:
    accelerator = "gpu" if ctx.on_cuda else "cpu"
    out = [
        f"data.path={prepare_data(ctx)}",
        "data.generate=null",
        f"log.run_dir={run_dir}",
        f"model.vocab_size={VOCAB}",  # the byte tokenizer's, which the stories are prepared with
        f"model.n_embd={shape.n_embd}",
        f"model.n_layer={shape.n_layer}",
        f"model.n_head={shape.n_head}",
        f"model.block_size={shape.T}",
        f"train.max_steps={steps}",
        f"train.global_batch_size={shape.B}",
        f"train.micro_batch_size={shape.B}",
        f"train.lr={ctx.budget.train_lr}",
        "train.warmup_steps=3",
        f"train.precision={'bf16-mixed' if ctx.on_cuda else '32-true'}",
        f"dist.accelerator={accelerator}",
        "dist.devices=1",
        f"dist.compile={str(ctx.compile).lower()}",
        "eval.batches=0",
        "log.every_n_steps=1",
        "log.checkpoint_every_n_steps=100000",
        "log.progress_bar=false",
    ]
    if arch == "mosaic_v2" and shape.T >= 1024:
        # The paper's windows (the tiny recipe scales them down for T = 128).
        out += ["model.stm_window=256", "model.ltm_delay_train=[64,256]", "model.ltm_delay_eval=64"]
    return out


def _recipe(arch: str, overrides: list[str]):
    from mosaics_lab.config import load_recipe

    return load_recipe(RECIPES / ARCH_RECIPE[arch], overrides)


def _with_matched_d_ff(ctx: Context, arch: str, shape: Shape, overrides: list[str]) -> list[str]:
    """A baseline's overrides plus the d_ff matching its mosaic's parameter count at this shape."""
    from mosaics_lab.bench.train import matched_baseline

    mosaic = next(m for m, b in PAIRS if b == arch)
    target = count_params(_recipe(mosaic, _overrides(ctx, mosaic, shape, ctx.work / "unused", 1)).model)
    d_ff = matched_baseline(_recipe(arch, overrides).model, target).d_ff
    return [*overrides, f"model.d_ff={d_ff}"]


def _losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(ln) for ln in (run_dir / C.METRICS_FILE).read_text().splitlines() if ln.strip()]
    return {r["step"]: r[C.TRAIN_LOSS] for r in rows if C.TRAIN_LOSS in r}


def _command(arch: str, overrides: list[str]) -> str:
    return " ".join(["mosaics-lab train", f"recipes/{ARCH_RECIPE[arch]}", *overrides])


class SyncAudit(L.Callback):
    """Records the host syncs of whole training iterations `start` .. `start + steps - 1` (from one
    on_train_batch_start to the next, so every hook of the step is inside). On CUDA through
    `torch.cuda.set_sync_debug_mode("warn")` (exact; compiled code included), on CPU through
    `HostSyncDetector` (eager code; the trainer runs eagerly there)."""

    def __init__(self, start: int = 2, steps: int = 2) -> None:
        self.start, self.stop = start, start + steps
        self.syncs: list[dict[str, Any]] = []
        self.method = ""
        self._active: Any = None
        self._records: list[Any] = []

    def _begin(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any) -> None:
        if pl_module.device.type == "cuda":
            self.method = 'torch.cuda.set_sync_debug_mode("warn")'
            self._active = warnings.catch_warnings(record=True)
            self._records = self._active.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            return
        self.method = "HostSyncDetector (device placement replayed on CPU)"
        detector = HostSyncDetector()
        self._active = detector.__enter__()
        opt_state = [
            t for o in trainer.optimizers for s in o.state.values() for t in s.values() if torch.is_tensor(t)
        ]
        detector.mark(pl_module.parameters(), batch, [t for t in opt_state if t.dim() > 0])

    def _end(self) -> None:
        if self._active is None:
            return
        if isinstance(self._active, HostSyncDetector):
            self._active.__exit__(None, None, None)
            self.syncs = call_sites(self._active.syncs)
        else:
            torch.cuda.set_sync_debug_mode(0)
            self._active.__exit__(None, None, None)
            sites: dict[str, int] = {}
            for w in self._records:
                if "synchroniz" in str(w.message):
                    key = f"{w.filename}:{w.lineno}"
                    sites[key] = sites.get(key, 0) + 1
            self.syncs = [{"op": "CUDA sync", "site": k, "count": n} for k, n in sites.items()]
        self._active = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.stop:
            self._end()
        elif trainer.global_step == self.start and self._active is None:
            self._begin(trainer, pl_module, batch)

    def on_train_end(self, trainer, pl_module) -> None:
        self._end()


class _Interrupted(RuntimeError):
    pass


class InterruptAt(L.Callback):
    """Kills fit at optimiser step `step` (after the periodic checkpoint of an earlier step), as a
    lost job would. Not KeyboardInterrupt: Lightning would ignore Ctrl-C for the rest of the process."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            raise _Interrupted(f"interrupted at step {self.step}")


def _train(ctx: Context, arch: str, overrides: list[str], *callbacks: L.Callback) -> Path:
    from mosaics_lab.training.run import train

    if ctx.compile:
        torch._dynamo.reset()  # each run starts from an empty compile cache, as a process would
    return train(_recipe(arch, overrides), callbacks=callbacks)


def check_training(ctx: Context) -> list[dict]:
    """Part 3: each architecture trains `train_steps` steps through the trainer; loss finite and falling."""
    shape, steps = ctx.budget.train_shape, ctx.budget.train_steps
    for arch in ("mosaic_v1", "gpt2", "mosaic_v2", "llama"):
        run_dir = ctx.work / "runs" / f"train-{arch}"
        overrides = _overrides(ctx, arch, shape, run_dir, steps)
        if arch in ("gpt2", "llama"):
            overrides = _with_matched_d_ff(ctx, arch, shape, overrides)
        ctx.log(
            f"  {arch}: {steps} steps at d {shape.n_embd}, {shape.n_layer} layers, T {shape.T}, B {shape.B}"
        )
        audit = SyncAudit()
        run_dir = _train(ctx, arch, overrides, audit)
        losses = _losses(run_dir)
        values = [losses[s] for s in sorted(losses)]
        summary = json.loads((run_dir / C.SUMMARY_FILE).read_text())
        finite = len(values) == steps and all(math.isfinite(v) for v in values)
        first, last = values[0], statistics.mean(values[-3:])
        row = {
            "check": f"{arch} trains",
            "arch": arch,
            "params": yaml.safe_load((run_dir / C.RECIPE_FILE).read_text())[C.RUN_META_KEY]["params"],
            "steps": len(values),
            "loss_first": round(first, 4),
            "loss_last3_mean": round(last, 4),
            "losses": [round(v, 4) for v in values],
            "wall_s": summary.get("wall_time_s"),
            "tokens_per_sec": summary["metrics"].get(C.PERF_TOKENS_PER_SEC),
            "compile": ctx.compile,
            "command": _command(arch, overrides),
            "ok": finite and last < first,
        }
        ctx.rows.append(row)
        ctx.findings.setdefault("trainer_syncs", {})[arch] = {"method": audit.method, "sites": audit.syncs}
        ctx.log(f"  {arch}: loss {first:.3f} -> {last:.3f} (mean of the last 3)")
        if not row["ok"]:
            raise CheckFailed(f"{arch}: loss {values} is not finite and falling over {steps} steps")
    return ctx.rows


def check_throughput(ctx: Context) -> list[dict]:
    """Part 4: each mosaic vs its matched baseline (bench.train.bench_pair: interleaved, median of
    rounds), FLOPs from FlopCounterMode, MFU against Lightning's peak for the device."""
    from lightning.fabric.utilities.throughput import get_available_flops

    dtype = torch.bfloat16 if ctx.on_cuda else torch.float32
    peak = get_available_flops(ctx.device, dtype)
    b = ctx.budget
    for mosaic, baseline in PAIRS:
        for shape in b.throughput_shapes:
            ctx.log(f"  {mosaic} vs {baseline} at T {shape.T}, B {shape.B}")
            rows = bench_pair(
                mosaic,
                baseline,
                shape,
                ctx.device,
                ctx.compile,
                b.throughput_rounds,
                b.throughput_steps,
                ctx.log,
            )
            for r in rows:
                flops_per_sec = None if r["tflops_per_sec"] is None else r["tflops_per_sec"] * 1e12
                r["peak_flops"] = peak
                r["mfu"] = None if peak is None or flops_per_sec is None else round(flops_per_sec / peak, 4)
                if peak is None:
                    r["mfu_reason"] = f"Lightning has no peak FLOP/s for {ctx.device.type} ({dtype})"
                r["check"] = f"{r['arch']} vs {r['vs']} T {r['T']}"
                r["ok"] = True  # bench_pair raises if a model does not learn on its batch
            ctx.rows += rows
    return ctx.rows


def check_fsdp(ctx: Context) -> list[dict]:
    """Part 5: dist.strategy fsdp on one process; a sharded checkpoint after `fsdp_steps` steps,
    resumed for 2 more, must give the losses of an uninterrupted run."""
    from mosaics_lab.training.strategies import is_sharded_checkpoint

    shape, n = ctx.budget.fsdp_shape, ctx.budget.fsdp_steps
    arch = "mosaic_v2"
    # A fixed long-term delay: with a random one the resumed losses also depend on the global RNG's
    # restore, which is the trainer's resume test (measured here: a random delay does not resume
    # exactly, FSDP or not), not FSDP's.
    delay = 64 if shape.T >= 1024 else 8
    extra = ["dist.strategy=fsdp", "dist.compile=false", f"model.ltm_delay_train=[{delay}]"]
    straight_dir, cut_dir = ctx.work / "runs" / "fsdp-straight", ctx.work / "runs" / "fsdp-cut"
    straight = _overrides(ctx, arch, shape, straight_dir, n + 2) + extra
    ctx.log(f"  {arch} fsdp: {n + 2} steps uninterrupted")
    _train(ctx, arch, straight)
    ctx.log(f"  {arch} fsdp: {n} steps, sharded checkpoint, then resumed to {n + 2}")
    cut = _overrides(ctx, arch, shape, cut_dir, n + 2) + extra + [f"log.checkpoint_every_n_steps={n}"]
    with contextlib.suppress(_Interrupted):
        _train(ctx, arch, cut, InterruptAt(n + 1))
    last = cut_dir / C.CHECKPOINT_DIR / C.LAST_CHECKPOINT
    sharded = is_sharded_checkpoint(last)
    shards = sorted(p.name for p in last.glob("*.distcp")) if sharded else []
    _train(ctx, arch, cut)  # the same command again: resumes from the sharded last.ckpt
    meta = yaml.safe_load((cut_dir / C.RECIPE_FILE).read_text())[C.RUN_META_KEY]
    summary = json.loads((cut_dir / C.SUMMARY_FILE).read_text())
    want, got = _losses(straight_dir), _losses(cut_dir)
    tol = RESUME_TOL[ctx.device.type]
    resumed_steps = list(range(n, n + 2))
    diffs = [abs(got[s] - want[s]) / abs(want[s]) for s in resumed_steps if s in got and s in want]
    row = {
        "check": f"{arch} fsdp: sharded checkpoint written and resumed",
        "sharded_checkpoint": sharded,
        "shards": shards,
        "resumed_from_step": meta.get("resumed_from_step"),
        "global_step": summary.get("global_step"),
        "losses_resumed": {s: round(got[s], 5) for s in resumed_steps if s in got},
        "losses_uninterrupted": {s: round(want[s], 5) for s in resumed_steps if s in want},
        "max_rel_diff": float(f"{max(diffs):.3e}") if diffs else None,
        "tol": tol,
    }
    row["ok"] = (
        sharded
        and bool(shards)
        and row["resumed_from_step"] == n
        and row["global_step"] == n + 2
        and len(diffs) == 2
        and all(math.isfinite(got[s]) for s in resumed_steps)
        and max(diffs) <= tol
    )
    ctx.rows.append(row)
    if not row["ok"]:
        raise CheckFailed(f"fsdp resume: {row}")
    return ctx.rows


def check_stm_scaling(ctx: Context) -> list[dict]:
    """Part 6: mosaic_v2 stm_only, one sequence per step, at growing T: time and memory per token
    should stay flat. Eager (the memories' FlexAttention is compiled on CUDA either way), so that no
    length pays a compilation. A length that fails (out of memory) is recorded, not raised."""
    C_, L_, H = ctx.budget.stm_width
    for T in ctx.budget.stm_lengths:
        shape = Shape(C_, L_, H, T, 1)
        ctx.log(f"  stm_only at T {T}")
        row: dict[str, Any] = {"check": f"mosaic_v2 stm_only T {T}", "T": T, "d": C_, "layers": L_}
        try:
            t = Trainee(
                model_config("mosaic_v2", shape, memories="stm_only"), shape, ctx.device, compile=False
            )
            t.step()  # warm-up
            sec = statistics.median(t.timed_steps(1) for _ in range(ctx.budget.stm_repeats))
            mib, method = t.peak_mib()
            row.update(
                ms_per_step=round(sec * 1e3, 2),
                us_per_token=round(sec / T * 1e6, 3),
                peak_mib=round(mib, 1),
                kib_per_token=round(mib * 1024 / T, 2),
                mem_method=method,
                ok=True,
            )
            del t
        except Exception as exc:  # a measurement, not a correctness check: keep the other lengths
            row.update(ok=False, error=f"{type(exc).__name__}: {str(exc)[:300]}")
        if ctx.on_cuda:
            torch.cuda.empty_cache()
        ctx.rows.append(row)
    done = [r for r in ctx.rows if r.get("ok")]
    if len(done) >= 2:
        lo, hi = done[0], done[-1]
        ctx.rows.append(
            {
                "check": "stm_only linear in T",
                "T_range": [lo["T"], hi["T"]],
                "time_per_token_growth": round(hi["us_per_token"] / lo["us_per_token"], 3),
                "memory_per_token_growth": round(hi["kib_per_token"] / lo["kib_per_token"], 3),
                # A T x T buffer would grow per-token memory by the ratio of the lengths.
                "length_ratio": hi["T"] / lo["T"],
                "ok": hi["kib_per_token"] / lo["kib_per_token"] < 2.0,
            }
        )
    return ctx.rows


def _model_step_syncs(ctx: Context, arch: str) -> tuple[list[dict], list[dict]]:
    """(HostSyncDetector sites, CUDA sync-debug sites) of one model step after a warm-up step:
    forward, loss, backward, clipping, AdamW, on the model and optimiser training builds."""
    shape = ctx.budget.sync_shape
    extra = {"ltm_delay_train": [64]} if arch == "mosaic_v2" and shape.T >= 1024 else {}
    if arch == "mosaic_v2" and not extra:
        extra = {"stm_window": 16, "ltm_delay_train": [8]}
    t = Trainee(model_config(arch, shape, **extra), shape, ctx.device, compile=False)
    t.step()  # warm-up: block masks, optimiser state, allocator

    def step() -> None:
        loss = lm_loss(t.model(t.x), t.y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(t.model.parameters(), 1.0)
        t.opt.step()
        t.opt.zero_grad(set_to_none=True)

    with HostSyncDetector() as detector:
        state = [s for st in t.opt.state.values() for s in st.values() if torch.is_tensor(s) and s.dim() > 0]
        detector.mark(t.model.parameters(), t.x, t.y, state)
        step()
    cuda_sites: list[dict] = []
    if ctx.on_cuda:
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step()
            finally:
                torch.cuda.set_sync_debug_mode(0)
        sites: dict[str, int] = {}
        for w in records:
            if "synchroniz" in str(w.message):
                sites[f"{w.filename}:{w.lineno}"] = sites.get(f"{w.filename}:{w.lineno}", 0) + 1
        cuda_sites = [{"op": "CUDA sync", "site": k, "count": n} for k, n in sites.items()]
    return call_sites(detector.syncs), cuda_sites


def check_syncs(ctx: Context) -> list[dict]:
    """Part 7: a model's training step must not sync (a failure); the trainer's step is audited
    during part 3 and its syncs reported as findings (they live in training/ and Lightning)."""
    failed = []
    for arch in ("gpt2", "llama", "mosaic_v1", "mosaic_v2"):
        host, cuda = _model_step_syncs(ctx, arch)
        ok = not host and not cuda
        ctx.rows.append(
            {"check": f"{arch} model step: no host sync", "detector": host, "cuda_sync_debug": cuda, "ok": ok}
        )
        ctx.log(f"  {arch} model step: {sum(s['count'] for s in host + cuda)} syncs")
        if not ok:
            failed.append(arch)
    for arch, audit in ctx.findings.get("trainer_syncs", {}).items():
        ctx.rows.append(
            {
                "check": f"{arch} trainer step (finding)",
                "method": audit["method"],
                "sites": audit["sites"],
                "syncs_per_step": sum(s["count"] for s in audit["sites"]) / 2,
                "finding": True,
            }
        )
    if failed:
        raise CheckFailed(f"host syncs in the model training step of {failed}: see the rows")
    return ctx.rows
