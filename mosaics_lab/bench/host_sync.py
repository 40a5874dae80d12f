"""Find the host-device synchronisations of a training step, on any device, CPU included.

A CUDA step that reads a device value on the host (`.item()`, `float(t)`, `if t:`, `.tolist()`,
`.cpu()`) or runs an op whose output shape depends on device values (`nonzero`, boolean-mask
indexing, `masked_select`, `unique`) waits for the GPU to drain its queue. On a GPU,
`torch.cuda.set_sync_debug_mode` reports them; on a CPU every tensor is on the host, so nothing
would look like a sync. `HostSyncDetector` therefore replays the CUDA placement on any device:

- a tensor is *device-side* if it is marked (`mark`: parameters, gradients, optimiser moments,
  the batch), if an op computed it from a device-side tensor, or if a factory made it with an
  explicit `device=` (what `torch.arange(T, device=x.device)` does on a GPU);
- a factory without `device=` makes a host tensor, as on a GPU (`torch.randint(lo, hi, ())` for a
  random delay is a host scalar there, and reading it costs nothing);
- reading a device-side tensor on the host, or a data-dependent-shape op on one, is a sync.

Each sync is recorded with the op and the innermost Python frame outside torch (its call site),
plus the innermost frame in the project (`mosaics_lab/`, this benchmark package excluded), so a
finding names the line to change. What it cannot see: explicit `torch.cuda.synchronize()` calls
(CPU runs skip them), host-to-device copies, and syncs inside compiled graphs (run it eagerly).
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakTensorKeyDictionary

__all__ = ["HostSync", "HostSyncDetector", "call_sites"]

_aten = torch.ops.aten
# Ops that copy a device value to the host: item(), float(t), int(t), bool(t), `if t:`, t.equal(u).
_HOST_READS = {_aten._local_scalar_dense, _aten.is_nonzero, _aten.equal, _aten.allclose}
# Ops whose output shape depends on device values: the host must wait for the values.
_DATA_DEPENDENT = {
    _aten.nonzero,
    _aten.masked_select,
    _aten._unique2,
    _aten.unique_consecutive,
    _aten.unique_dim,
    _aten.repeat_interleave,
}
# Tensor methods that hand a device tensor to the host.
_HOST_METHODS = {"cpu", "tolist", "numpy", "__array__"}
_FACTORIES = {
    torch.arange,
    torch.empty,
    torch.zeros,
    torch.ones,
    torch.full,
    torch.rand,
    torch.randn,
    torch.randint,
    torch.linspace,
    torch.eye,
    torch.tensor,
    torch.as_tensor,
}

_PACKAGE = Path(__file__).resolve().parents[1]  # mosaics_lab/
_TORCH = Path(torch.__file__).resolve().parent
_SELF = Path(__file__).resolve()


@dataclass(frozen=True)
class HostSync:
    op: str  # the aten op or tensor method
    site: str  # innermost frame outside torch: "path:line function"
    project_site: str | None  # innermost frame in mosaics_lab/ (not mosaics_lab/bench/), if any


def _frame_label(filename: str, lineno: int, name: str) -> str:
    path = Path(filename)
    for root, prefix in ((_PACKAGE.parent, ""), (_TORCH.parent, "")):
        try:
            return f"{prefix}{path.relative_to(root)}:{lineno} {name}"
        except ValueError:
            continue
    parts = path.parts
    # site-packages/<lib>/...: keep from the library name on
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    return f"{'/'.join(parts[-4:])}:{lineno} {name}"


def _where() -> tuple[str, str | None]:
    frame = sys._getframe(1)
    site = project = None
    while frame is not None:
        path = Path(frame.f_code.co_filename)
        inside_torch = _TORCH in path.parents
        if site is None and not inside_torch and path != _SELF:
            site = _frame_label(str(path), frame.f_lineno, frame.f_code.co_name)
        if _PACKAGE in path.parents and (_PACKAGE / "bench") not in path.parents:
            project = _frame_label(str(path), frame.f_lineno, frame.f_code.co_name)
            break
        frame = frame.f_back
    return site or "?", project


class _Dispatch(TorchDispatchMode):
    def __init__(self, owner: HostSyncDetector) -> None:
        super().__init__()
        self.owner = owner

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        on_device = any(t in self.owner.device_side for t in inputs)
        packet = func.overloadpacket
        if on_device:
            if packet in _HOST_READS or packet in _DATA_DEPENDENT:
                self.owner._record(str(packet).removeprefix("aten."))
            elif packet is _aten.index and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in tree_leaves(args[1:])
            ):
                self.owner._record("index with a boolean mask")
        out = func(*args, **kwargs)
        if on_device:
            self.owner.mark(out)
        return out


class _Function(TorchFunctionMode):
    def __init__(self, owner: HostSyncDetector) -> None:
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _HOST_METHODS and args and isinstance(args[0], torch.Tensor):
            if args[0] in self.owner.device_side:
                self.owner._record(f"Tensor.{name}")
        elif (
            name == "to" and args and isinstance(args[0], torch.Tensor) and args[0] in self.owner.device_side
        ):
            # Only a literal "cpu": on a CPU run `.to(x.device)` (e.g. in clip_grad_norm_) also says cpu.
            target = kwargs.get("device", args[1] if len(args) > 1 else None)
            if isinstance(target, str) and target.startswith("cpu"):
                self.owner._record('Tensor.to("cpu")')
        out = func(*args, **kwargs)
        if func in _FACTORIES and kwargs.get("device") is not None:
            self.owner.mark(out)
        return out


class HostSyncDetector:
    """Context manager recording every host sync on device-side tensors (module docstring).

    with HostSyncDetector() as det:
        det.mark(model.parameters(), batch)
        step()
    det.syncs -> [HostSync, ...]
    """

    def __init__(self) -> None:
        self.device_side: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        self.syncs: list[HostSync] = []
        self._modes: list[Any] = []

    def mark(self, *trees: Any) -> None:
        """Treat these tensors (any nesting of lists, tuples, dicts, generators) as device-side."""
        for tree in trees:
            if not isinstance(tree, (torch.Tensor, list, tuple, dict)):
                # a generator such as model.parameters(); anything else (None, a number) holds no tensor
                tree = list(tree) if hasattr(tree, "__next__") else []
            for t in tree_leaves(tree):
                if isinstance(t, torch.Tensor):
                    self.device_side[t] = True

    def _record(self, op: str) -> None:
        site, project = _where()
        self.syncs.append(HostSync(op, site, project))

    def __enter__(self) -> HostSyncDetector:
        self._modes = [_Function(self), _Dispatch(self)]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        self._modes = []


def call_sites(syncs: list[HostSync]) -> list[dict[str, Any]]:
    """Syncs grouped by (op, site, project site), most frequent first, as JSON-ready rows."""
    counts = Counter((s.op, s.site, s.project_site) for s in syncs)
    return [
        {"op": op, "site": site, "project_site": project, "count": n}
        for (op, site, project), n in counts.most_common()
    ]
