"""`mosaics-lab bench gpu-check`: its CPU mode end to end, that its checks can fail, and the host-sync
detector it uses to review the training step without a GPU."""

from __future__ import annotations

import json
import math

import torch

import mosaics_lab.ops as ops
from mosaics_lab.bench.gpu_check import PARTS
from mosaics_lab.bench.gpu_ops import PENDING_DOC_IDS
from mosaics_lab.bench.host_sync import HostSyncDetector
from mosaics_lab.cli import main


def gpu_check(tmp_path, *extra: str) -> tuple[int, dict]:
    rc = main(["bench", "gpu-check", "--device", "cpu", "--quick", "--out", str(tmp_path), *extra])
    return rc, json.loads((tmp_path / "gpu_check.json").read_text())


def numbers(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from numbers(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from numbers(v)
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield tree
    elif isinstance(tree, str) and tree in ("nan", "inf", "-inf"):
        yield float(tree)


def test_quick_cpu_gpu_check_passes_every_part_and_writes_every_figure(tmp_path, capsys):
    rc, report = gpu_check(tmp_path)
    out = capsys.readouterr().out
    assert rc == 0, report["first_failure"]
    assert report["status"] == "ok" and list(report["parts"]) == list(PARTS)
    assert (
        report["meta"]["versions"]["torch"] == torch.__version__
        and report["meta"]["device"]["device"] == "cpu"
    )
    assert all(math.isfinite(x) for x in numbers(report)), "a NaN or inf in gpu_check.json"
    for name, part in report["parts"].items():
        assert part["status"] == "ok" and part["rows"] and part["seconds"] >= 0, name
        assert f"| **{name}** |" in out
    parts = report["parts"]

    ops_rows = parts["ops"]["rows"]
    compared = [r for r in ops_rows if "rel_err" in r]
    # Every op, both dtypes, forward and every gradient against a named reference, within tolerance.
    assert {r["dtype"] for r in compared} == {"float32", "bfloat16"}
    assert all(r["reference"].endswith("_reference") and r["max_rel_err"] <= r["tol"] for r in compared)
    backward = [r for r in compared if "backward" not in r]
    assert all(set(r["compared"]) > {"y"} for r in backward)
    flex = [r for r in compared if r["path"].startswith("flex")]
    assert len(flex) == 12 and all(
        r["compared"] == ["y"] and "no CPU backward" in r["backward"] for r in flex
    )
    assert "forward only" in parts["ops"]["note"]
    checks = {r["check"] for r in ops_rows}
    assert {
        "kernel_regression causal",
        "kernel_regression window 1..31",
        "kernel_regression delay >= 16",
    } <= checks
    # The ops take doc_ids: the document-mask cases ran (none left pending).
    assert "kernel_regression delay >= 16 + document mask" in {r["check"] for r in compared}
    assert not [r for r in ops_rows if "pending" in r]

    assert parts["blocks"]["rows"][-1]["delays_checked"] and "eager backend" in parts["blocks"]["note"]
    for row in parts["train"]["rows"]:
        assert len(row["losses"]) == row["steps"] == 8 and row["loss_last3_mean"] < row["loss_first"]
        assert row["command"].startswith("mosaics-lab train recipes/")
    arch_params = {r["arch"]: r["params"] for r in parts["train"]["rows"]}
    assert abs(arch_params["gpt2"] - arch_params["mosaic_v1"]) / arch_params["mosaic_v1"] < 0.02
    throughput = parts["throughput"]["rows"]
    assert {r["arch"] for r in throughput} == {"mosaic_v1", "gpt2", "mosaic_v2", "llama"}
    assert all(r["tokens_per_sec"] > 0 and r["gflop_per_step"] > 0 and r["mfu"] is None for r in throughput)
    (fsdp,) = parts["fsdp"]["rows"]
    assert fsdp["sharded_checkpoint"] and fsdp["shards"] and fsdp["resumed_from_step"] == 3
    assert fsdp["global_step"] == 5 and fsdp["max_rel_diff"] <= fsdp["tol"]
    stm = [r for r in parts["stm"]["rows"] if "T" in r]
    assert [r["T"] for r in stm] == [256, 512, 1024] and all(r["kib_per_token"] > 0 for r in stm)
    model_steps = [r for r in parts["syncs"]["rows"] if not r.get("finding")]
    assert len(model_steps) == 4 and all(r["ok"] and r["detector"] == [] for r in model_steps)
    # The trainer step is audited too; its syncs are findings with their call sites.
    findings = [r for r in parts["syncs"]["rows"] if r.get("finding")]
    assert len(findings) == 4 and all("HostSyncDetector" in r["method"] for r in findings)


def wrong_but_close(reference, factor: float = 1.001, grad_only: bool = False):
    def op(*args, **kwargs):
        y = reference(*args, **kwargs)
        if grad_only:  # the reference's forward, gradients scaled by `factor`
            return y + (factor - 1.0) * (y - y.detach())
        return factor * y

    return op


def test_a_slightly_wrong_kernel_regression_fails_the_check_and_exits_nonzero(tmp_path, monkeypatch):
    monkeypatch.setattr(ops, "kernel_regression", wrong_but_close(ops.kernel_regression_reference))
    rc, report = gpu_check(tmp_path, "--parts", "ops,blocks")
    assert rc == 1 and report["status"] == "failed"
    assert report["first_failure"].startswith("ops: kernel_regression causal (float32, plain")
    assert report["parts"]["blocks"]["status"] == "skipped"  # the first failure stops the run
    assert "earlier correctness check failed" in report["parts"]["blocks"]["reason"]


def test_a_wrong_gradient_with_a_right_forward_fails_the_check(tmp_path, monkeypatch):
    monkeypatch.setattr(
        ops, "leaky_average", wrong_but_close(ops.leaky_average_reference, 1.01, grad_only=True)
    )
    rc, report = gpu_check(tmp_path, "--parts", "ops")
    assert rc == 1
    (failed,) = [r for r in report["parts"]["ops"]["rows"] if r.get("ok") is False]
    assert failed["rel_err"]["y"] == 0.0 and failed["rel_err"]["dx"] > failed["tol"]


def test_an_op_without_doc_ids_is_recorded_pending_not_failed(tmp_path, monkeypatch):
    reference = ops.leaky_average_reference
    monkeypatch.setattr(
        ops, "leaky_average", lambda x, log_decay, log_gate=None: reference(x, log_decay, log_gate)
    )
    rc, report = gpu_check(tmp_path, "--parts", "ops")
    assert rc == 0
    pending = [r for r in report["parts"]["ops"]["rows"] if "pending" in r]
    assert {r["check"] for r in pending} == {"leaky_average document mask"}
    assert all(r["pending"] == PENDING_DOC_IDS for r in pending)


def test_a_host_sync_in_a_model_step_fails_the_syncs_part_and_names_its_line(tmp_path, monkeypatch):
    from mosaics_lab.models import gpt2

    forward = gpt2.MLP.forward

    def syncing_forward(self, x):
        if x.mean() > 1e9:  # Python control flow on a device tensor: a sync on a GPU
            raise AssertionError
        return forward(self, x)

    monkeypatch.setattr(gpt2.MLP, "forward", syncing_forward)
    rc, report = gpu_check(tmp_path, "--parts", "syncs")
    assert rc == 1
    rows = {r["check"]: r for r in report["parts"]["syncs"]["rows"]}
    (site,) = rows["gpt2 model step: no host sync"]["detector"]
    assert site["op"] == "_local_scalar_dense" and "test_gpu_check.py" in site["site"]
    assert rows["llama model step: no host sync"]["ok"]


def test_host_sync_detector_flags_host_reads_of_device_tensors_only():
    weight = torch.randn(4, 4)
    with HostSyncDetector() as det:
        det.mark([weight])
        y = (weight @ torch.ones(4)).relu()  # derived from a device tensor
        float(y.sum())
        bool(y[0] > 0)
        y.tolist()
        y[y > 0]  # boolean-mask indexing: data-dependent shape
        torch.nonzero(y)
        n = torch.randint(1, 5, ())  # a host scalar on a GPU too: reading it is free
        int(n.item())
        t = torch.arange(3, device=weight.device)  # explicit device: device-side
        t.sum().item()
        torch.arange(3).sum().item()  # default device: host
    ops_seen = [s.op for s in det.syncs]
    assert ops_seen == [
        "_local_scalar_dense",
        "_local_scalar_dense",
        "Tensor.tolist",
        "index with a boolean mask",
        "nonzero",
        "_local_scalar_dense",
    ]
    assert all("test_gpu_check.py" in s.site for s in det.syncs)
