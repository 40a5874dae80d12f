"""``mosaics-lab bench gpu-check [--device cuda|cpu] [--quick] [--parts ...] [--out bench/]``.

One prepared command that proves the CUDA path in minutes (issue 13): on one H100 / H200 in under
8 minutes, compilation included; on CPU (`--device cpu --quick`) in about a minute, which is how the
fast test suite keeps the harness itself from being what fails on the GPU.

Parts, in order (`--parts` picks some):
1. ops      every fast op vs its naive reference, forward and every gradient, fp32 and bf16
            (gpu_ops.check_ops); FlexAttention forward only on CPU (no CPU backward).
2. blocks   each mosaic block under torch.compile(fullgraph=True) vs eager, forward and backward;
            mosaic_v2 over 3 new LTM delays without recompiling (Inductor on CUDA; dynamo's eager
            backend on CPU, where Inductor takes tens of seconds a graph).
3. train    the four architectures through the real trainer, loss finite and falling
            (bf16-mixed, dist.compile on CUDA; GPT-2-small shape).
4. throughput  each mosaic vs its parameter-matched baseline, interleaved, median of rounds, FLOPs
            from FlopCounterMode, MFU against Lightning's peak for the device, peak memory.
5. fsdp     dist.strategy fsdp on one process: sharded checkpoint, resumed, same losses.
6. stm      mosaic_v2 stm_only time and memory per token at growing T.
7. syncs    no host sync in a model's training step; the trainer step's syncs as findings.

A correctness failure (parts 1, 2, 3, 5, 7) stops the run (unless --keep-going) and the command
exits 1; a part that cannot run on this device is skipped with its reason. Prints one table (with
the time of each part) and writes `<out>/gpu_check.json`: device, versions, every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mosaics_lab.analysis.tables import markdown_table
from mosaics_lab.bench.gpu_common import GPU, QUICK, CheckFailed, Context

PARTS = ("ops", "blocks", "train", "throughput", "fsdp", "stm", "syncs")
CORRECTNESS = {"ops", "blocks", "train", "fsdp", "syncs"}


def _part_functions() -> dict[str, Callable[[Context], list[dict]]]:
    from mosaics_lab.bench import gpu_ops, gpu_train

    return {
        "ops": gpu_ops.check_ops,
        "blocks": gpu_ops.check_blocks,
        "train": gpu_train.check_training,
        "throughput": gpu_train.check_throughput,
        "fsdp": gpu_train.check_fsdp,
        "stm": gpu_train.check_stm_scaling,
        "syncs": gpu_train.check_syncs,
    }


def _notes(ctx: Context) -> dict[str, str]:
    """What each part does differently on this device, and why (recorded in the JSON)."""
    notes = {}
    if not ctx.on_cuda:
        notes["ops"] = (
            "CPU: kernel_regression runs its plain path; FlexAttention is checked forward only "
            "(no CPU backward)"
        )
    if not ctx.compile:
        reason = "Inductor on CPU compiles a block in tens of seconds" if not ctx.on_cuda else "--no-compile"
        notes["blocks"] = (
            f"dynamo's eager backend: graph capture (fullgraph, recompilation) checked, "
            f"not Inductor ({reason})"
        )
        notes["train"] = f"dist.compile false ({reason}); the compiled step is checked on CUDA"
        notes["throughput"] = f"eager ({reason})"
    if not ctx.on_cuda:
        notes["syncs"] = (
            "CPU: HostSyncDetector replays the device placement; "
            "torch.cuda.set_sync_debug_mode runs on CUDA only"
        )
    return notes


def _versions() -> dict[str, Any]:
    import lightning

    from mosaics_lab import __version__
    from mosaics_lab.training.run import git_sha

    out = {
        "mosaics_lab": __version__,
        "git_sha": git_sha(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
    }
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    return out


def _device_info(device: torch.device) -> dict[str, Any]:
    from mosaics_lab.bench.cli import machine

    info = machine(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu_memory_gib=round(props.total_memory / 2**30, 1), capability=f"{props.major}.{props.minor}"
        )
    return info


def _finite(value: Any) -> Any:
    """JSON has no NaN / inf: write them as strings so that a reader sees them and the file parses."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _summary(part: str, rows: list[dict]) -> str:
    checks = [r for r in rows if "ok" in r]
    pending = [r for r in rows if "pending" in r]
    text = f"{sum(bool(r['ok']) for r in checks)}/{len(checks)} ok"
    return text + (f", {len(pending)} pending" if pending else "")


def _row_result(row: dict) -> str:
    if "pending" in row:
        return row["pending"]
    if "error" in row:
        return row["error"]
    bits = []
    for key, fmt in (
        ("max_rel_err", "max rel err {}"),
        ("max_abs_err", "max abs err {}"),
        ("tol", "tol {}"),
        ("loss_first", "loss {}"),
        ("loss_last3_mean", "-> {}"),
        ("ms_per_step", "{} ms/step"),
        ("tokens_per_sec", "{} tok/s"),
        ("ratio_vs_baseline", "ratio {}"),
        ("mfu", "MFU {}"),
        ("peak_mib", "{} MiB"),
        ("us_per_token", "{} us/token"),
        ("kib_per_token", "{} KiB/token"),
        ("memory_per_token_growth", "memory/token x{}"),
        ("time_per_token_growth", "time/token x{}"),
        ("max_rel_diff", "resumed vs straight {}"),
        ("syncs_per_step", "{} syncs/step"),
    ):
        if row.get(key) is not None:
            bits.append(fmt.format(row[key]))
    if row.get("backward"):
        bits.append("forward only")
    return ", ".join(bits)


def format_table(parts: dict[str, dict]) -> str:
    table = []
    for name, part in parts.items():
        seconds = f"{part['seconds']:.1f}" if part.get("seconds") is not None else None
        detail = part.get("reason") or part.get("error") or _summary(name, part["rows"])
        table.append(
            {
                "part": f"**{name}**",
                "check": None,
                "status": f"**{part['status']}**",
                "result": detail,
                "s": seconds,
            }
        )
        for row in part["rows"]:
            status = (
                "pending"
                if "pending" in row
                else ("finding" if row.get("finding") else ("ok" if row.get("ok") else "FAIL"))
            )
            label = row["check"] + "".join(f", {row[k]}" for k in ("dtype", "path") if k in row)
            table.append(
                {"part": name, "check": label, "status": status, "result": _row_result(row), "s": None}
            )
    return markdown_table(table, columns=["part", "check", "status", "result", "s"])


def run_gpu_check(args: argparse.Namespace) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device here; use --device cpu (with --quick)")
    device = torch.device(args.device)
    parts = PARTS if not args.parts else tuple(p.strip() for p in args.parts.split(","))
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"--parts: unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    budget = QUICK if args.quick else GPU
    compile = args.compile if args.compile is not None else device.type == "cuda"
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    log = lambda msg: print(f"[gpu-check] {msg}", file=sys.stderr, flush=True)
    ctx = Context(device=device, budget=budget, work=work, compile=compile, log=log)
    notes = _notes(ctx)
    started = time.time()
    report: dict[str, Any] = {
        "meta": {
            "command": " ".join(["mosaics-lab", *sys.argv[1:]])
            if sys.argv[1:]
            else "mosaics-lab bench gpu-check",
            "device": _device_info(device),
            "versions": _versions(),
            "quick": args.quick,
            "compile": compile,
            "budget": {k: v for k, v in vars(budget).items()},
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "load_before": list(os.getloadavg()),
        },
        "status": "ok",
        "first_failure": None,
        "parts": {},
    }
    functions = _part_functions()
    try:
        for name in PARTS:
            if name not in parts:
                continue
            log(f"part {name}")
            ctx.rows = []
            t0 = time.perf_counter()
            part: dict[str, Any] = {"status": "ok", "rows": ctx.rows}
            if name in notes:
                part["note"] = notes[name]
            try:
                functions[name](ctx)
            except CheckFailed as exc:
                part.update(status="failed", error=str(exc))
            except Exception as exc:  # a crash is a failure of the path under check, not of the harness
                part.update(
                    status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()
                )
            part["seconds"] = round(time.perf_counter() - t0, 2)
            if part["status"] == "ok" and any(not r.get("ok", True) for r in ctx.rows):
                part["status"] = "failed"
                part["error"] = "a measurement failed (see its row)"
            report["parts"][name] = part
            log(f"part {name}: {part['status']} in {part['seconds']:.1f} s")
            if part["status"] == "failed":
                report["status"] = "failed"
                report["first_failure"] = report["first_failure"] or f"{name}: {part['error']}"
                if name in CORRECTNESS and not args.keep_going:
                    break
        for name in PARTS:
            if name not in report["parts"]:
                why = (
                    "not in --parts" if name not in parts else "not run: an earlier correctness check failed"
                )
                report["parts"][name] = {"status": "skipped", "reason": why, "rows": []}
    finally:
        report["wall_s"] = round(time.time() - started, 1)
        report["meta"]["load_after"] = list(os.getloadavg())
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "gpu_check.json"
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(_finite(report), indent=2, default=str) + "\n")
        os.replace(tmp, path)
        if args.keep_work:
            log(f"scratch directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    ordered = {name: report["parts"][name] for name in PARTS}
    where = report["meta"]["device"]
    print(f"\n## gpu-check on {device} ({where.get('gpu', where['cpu'])})\n")
    print(format_table(ordered))
    print(f"\nstatus: {report['status']}, wall {report['wall_s']:.0f} s -> {path}")
    if report["first_failure"]:
        print(f"first failure: {report['first_failure']}")
    return 0 if report["status"] == "ok" else 1
