"""``mosaics-lab bench {ops,train,mask,all,gpu-check} [--quick] [--device cpu|cuda] [--out bench/]``.

One command that builds, checks and times:
1. check: on the chosen device, the fast ops (leaky average; kernel regression full and windowed,
   FlexAttention on CUDA) must agree with their naive references, forward and every gradient,
   before anything is timed; each model must lower its loss on a repeated batch.
2. time: `bench.ops` (ops vs references vs SDPA) and `bench.train` (each mosaic against its
   parameter-matched Transformer, interleaved; mosaic_v2 stm_only at growing T), and `mask` (each
   architecture's step with and without data.document_mask).
3. report: Markdown tables on stdout, and `<out>/ops.json`, `<out>/train.json`,
   `<out>/stm_scaling.json`, `<out>/document_mask.json`, each with the machine, versions, load and
   command it was measured with.

`gpu-check` is the one command that proves the CUDA path (bench/gpu_check.py): correctness of the
ops, compiled blocks, training, FSDP and syncs, plus throughput, MFU and stm_only scaling, in one
table and `<out>/gpu_check.json`; it exits 1 on the first correctness failure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

# Lengths of the op benchmark: issue 3 asks for 512 / 2048 / 8192 and for the speed-up at 4096.
OPS_LENGTHS = (512, 2048, 4096, 8192)
# Relative error ||fast - ref|| / ||ref|| allowed by the pre-timing check (tests/ops pin 1e-5 on
# small shapes; this runs longer sequences with unit-scale random inputs).
CHECK_TOL = 1e-4


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="check and time the ops and the training step (table + bench/*.json)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "what",
        choices=("ops", "train", "mask", "all", "gpu-check"),
        help="which benchmark (mask: the cost of data.document_mask); gpu-check: prove the CUDA path "
        "(exit 1 on a correctness failure)",
    )
    p.add_argument("--quick", action="store_true", help="tiny shapes, one repeat: a smoke run of ~1 minute")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default cpu)")
    p.add_argument("--out", default="bench", help="directory for the JSON results (default bench/)")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile each block, as dist.compile does (default: on for cuda, off for cpu)",
    )
    p.add_argument(
        "--parts",
        default=None,
        help="gpu-check only: comma-separated parts to run (ops,blocks,train,throughput,fsdp,stm,syncs)",
    )
    p.add_argument(
        "--keep-going",
        action="store_true",
        help="gpu-check only: run the later parts after a correctness failure (still exits 1)",
    )
    p.add_argument("--keep-work", action="store_true", help="gpu-check only: keep its scratch directory")
    p.set_defaults(func=run_bench)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def check_ops(device: torch.device) -> list[dict]:
    """Fast op vs reference, forward and gradients, on `device`; raises if any disagrees."""
    from mosaics_lab.ops import (
        kernel_regression,
        kernel_regression_reference,
        leaky_average,
        leaky_average_reference,
    )

    gen = torch.Generator().manual_seed(0)
    B, H, T, D = 1, 4, 333, 64  # T not a multiple of any chunk or block size

    def leaves(*shapes: tuple[int, ...]) -> list[torch.Tensor]:
        return [torch.randn(s, generator=gen).to(device).requires_grad_(True) for s in shapes]

    x, decay, gate = leaves((B, H, T, D), (B, H, T), (B, H, T))
    decay_fn = lambda d: -d.abs()  # log decays are <= 0
    q, k, v = leaves((B, H, T, D), (B, H, T, D), (B, H, T, D))
    cases = [
        (
            "leaky_average",
            (x, decay, gate),
            lambda f, x, d, g: f(x, decay_fn(d), g),
            leaky_average,
            leaky_average_reference,
        ),
        ("kernel_regression_causal", (q, k, v), lambda f, *a: f(*a, 1), kernel_regression, None),
        ("kernel_regression_window255", (q, k, v), lambda f, *a: f(*a, 1, 255), kernel_regression, None),
    ]
    rows = []
    for name, inputs, call, fast, ref in cases:
        ref = ref or kernel_regression_reference
        results = []
        for fn in (fast, ref):
            for t in inputs:
                t.grad = None
            y = call(fn, *inputs)
            y.backward(torch.ones_like(y))
            results.append([y.detach()] + [t.grad.clone() for t in inputs])
        errors = [_rel_err(a, b) for a, b in zip(*results)]
        rows.append({"op": name, "max_rel_err": max(errors), "tol": CHECK_TOL, "device": str(device)})
        if max(errors) > CHECK_TOL:
            raise RuntimeError(
                f"{name} on {device}: fast path disagrees with its reference (relative errors of the "
                f"output and gradients {[f'{e:.2e}' for e in errors]} > {CHECK_TOL}); not timing a wrong op"
            )
    return rows


def _write(out: Path, name: str, meta: dict[str, Any], rows: list[dict], **extra: Any) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps({"meta": {**meta, "load_after": _load()}, **extra, "rows": rows}, indent=2))
    os.replace(tmp, path)
    return path


def run_bench(args: argparse.Namespace) -> int:
    if args.what == "gpu-check":
        from mosaics_lab.bench.gpu_check import run_gpu_check

        return run_gpu_check(args)
    from mosaics_lab.bench.mask import bench_document_mask, format_document_mask
    from mosaics_lab.bench.ops import bench_ops, format_table
    from mosaics_lab.bench.train import bench_pairs, bench_stm_scaling, format_pairs, format_scaling

    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device here; use --device cpu")
    device = torch.device(args.device)
    compile = args.compile if args.compile is not None else device.type == "cuda"
    out = Path(args.out)
    log = lambda msg: print(f"[bench] {msg}", file=sys.stderr, flush=True)
    started = time.time()
    meta = {
        "command": " ".join(["mosaics-lab", *sys.argv[1:]]),
        "quick": args.quick,
        "compile": compile,
        "machine": machine(device),
        "load_before": _load(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    log(f"machine: {meta['machine']['cpu']}, load {meta['load_before']}, torch {torch.__version__}")
    checks = check_ops(device)
    for c in checks:
        log(f"check {c['op']}: max relative error {c['max_rel_err']:.1e} <= {c['tol']:.0e}")
    if args.what in ("ops", "all"):
        log("ops: leaky_average and kernel_regression vs references and SDPA")
        rows = bench_ops(OPS_LENGTHS, quick=args.quick, device=device)
        path = _write(out, "ops", meta, rows, checks=checks)
        print(f"\n## Ops (forward + backward), {device}\n\n{format_table(rows)}\n\n-> {path}")
    if args.what in ("train", "all"):
        rows = bench_pairs(device, args.quick, compile, log=log)
        path = _write(out, "train", meta, rows)
        print(f"\n## Training step, each mosaic vs its matched Transformer, {device}\n")
        print(f"{format_pairs(rows)}\n\n-> {path}")
        rows = bench_stm_scaling(device, args.quick, compile, log=log)
        path = _write(out, "stm_scaling", meta, rows)
        print(f"\n## mosaic_v2 stm_only: linear in T, {device}\n\n{format_scaling(rows)}\n\n-> {path}")
    if args.what in ("mask", "all"):
        rows = bench_document_mask(device, args.quick, compile, log=log)
        path = _write(out, "document_mask", meta, rows)
        print(f"\n## The cost of the document mask, {device}\n\n{format_document_mask(rows)}\n\n-> {path}")
    log(f"done in {time.time() - started:.0f} s, load {_load()}")
    return 0
