"""Run cross-compiled TVM libraries under qemu user-mode emulation and compare with the host.

* **aarch64**: a sysroot with Debian's arm64 Python 3.11 and the aarch64 TVM/numpy
  wheels (``<toolchains>/aarch64-py311``). The emulated Python loads each library
  through the runtime's own ``tvm`` executor (``edgeuq_runtime`` is pure Python +
  numpy), so the check covers the device code path, chunking and padding included.
* **armv7**: no armv7 wheels exist for TVM, numpy or onnxruntime, so each library is run by
  ``tvm_vm_driver``, a small C++ program statically linked with the TVM C++ runtime (Relax VM +
  library loader) cross-built from the runtime sources shipped in the wheels, plus edgeuq's own
  replacements for the few support headers the wheels omit (:mod:`.armv7`, built into
  ``<toolchains>/armv7-tvm-runtime`` by ``scripts/setup_toolchains.sh``). Fixed-batch libraries
  are chunked and zero-padded here exactly like the runtime's executor does. Without the driver
  the libraries are cross-compiled and linked (hard-float ABI) and labelled "compile only"
  (``ARMV7_GAP``).

Both are compared with ONNX Runtime here on the same inputs and noise. Emulated
runs are never timed: qemu's speed says nothing about the board.
"""
from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np

import edgeuq_runtime
from edgeuq_runtime.batching import run_fixed_batch

from ..base import Evidence
from ..toolchain import ToolchainError, require_tool, toolchains_dir
from .numerics import TvmNumericsError, judge, ort_outputs, reference_feeds

__all__ = ["check_under_qemu", "aarch64_sysroot", "run_aarch64", "run_armv7_graph", "ARMV7_GAP", "QEMU_TIMEOUT_S",
           "QEMU_AARCH64_CPUS", "qemu_cpu"]

QEMU_TIMEOUT_S = 600
# A target's ``mcpu`` -> the qemu-aarch64 CPU model that emulates its instruction set (so an
# instruction the core lacks faults instead of running on qemu's permissive "max" CPU). qemu has
# no Cortex-A78AE model: the Cortex-A76 has the same Armv8.2-A feature set (fp16, dotprod, RCpc).
QEMU_AARCH64_CPUS = {"cortex-a35": "cortex-a35", "cortex-a53": "cortex-a53", "cortex-a57": "cortex-a57",
                     "cortex-a72": "cortex-a72", "cortex-a76": "cortex-a76", "cortex-a78ae": "cortex-a76",
                     "neoverse-n1": "neoverse-n1", "a64fx": "a64fx"}
ARMV7_GAP = ("no TVM runtime for armv7 on this host: PyPI has no armv7 TVM wheel, and the cross-built C++ runtime "
             "driver (edgeuq.lower.tvm.armv7; built by scripts/setup_toolchains.sh) is missing")

_AARCH64_SCRIPT = r"""
import json, sys
job = json.load(open(sys.argv[1]))
sys.path[:0] = job["paths"]
import numpy as np
from edgeuq_runtime.executors.tvm import load_tvm
from pathlib import Path
import platform
for g in job["graphs"]:
    graph = load_tvm(Path(g["library"]), None, g["options"])
    feeds = dict(np.load(g["inputs"]))
    np.savez(g["outputs"], **graph.run(feeds))
print("ran", len(job["graphs"]), "graphs on", platform.machine())
"""


def aarch64_sysroot() -> Path:
    """The aarch64 Python sysroot, or a ToolchainError saying how to make it."""
    root = toolchains_dir() / "aarch64-py311"
    if not (root / ".done").is_file():
        raise ToolchainError(f"no aarch64 Python sysroot at {root}; run: bash scripts/setup_toolchains.sh")
    return root


def _qemu(name: str) -> str:
    return require_tool(name, "run cross-compiled libraries under user-mode emulation")


def qemu_cpu(target: Any) -> str:
    """The qemu CPU model for ``target``'s ``mcpu`` (aarch64 and armv7); a ValueError for an unknown one."""
    mcpu = (getattr(target, "tvm", None) or {}).get("mcpu")
    if target.arch == "armv7":
        from .armv7 import QEMU_CPUS

        table = {c: c for c in QEMU_CPUS}
    elif target.arch == "aarch64":
        table = QEMU_AARCH64_CPUS
    else:
        raise ValueError(f"no qemu check for arch {target.arch!r}")
    if mcpu not in table:
        raise ValueError(f"target {target.name!r}: no qemu-{target.arch} CPU model known for mcpu {mcpu!r} "
                         f"(known: {sorted(table)}); refusing to emulate it on qemu's permissive 'max' CPU")
    return table[mcpu]


def _run(cmd: list, what: str) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=QEMU_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{what} timed out after {QEMU_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-3000:]}")
    return proc.stdout


def run_aarch64(graphs: list, workdir: Path, cpu: str) -> list:
    """Run ``[{library, options, feeds}]`` under qemu-aarch64 emulating ``cpu``; one output dict per graph."""
    root, qemu = aarch64_sysroot(), _qemu("qemu-aarch64-static")
    runtime_pkg = str(Path(edgeuq_runtime.__file__).resolve().parents[1])
    job: Dict[str, Any] = {"paths": [str(root / "site"), runtime_pkg], "graphs": []}
    for i, g in enumerate(graphs):
        np.savez(workdir / f"in{i}.npz", **g["feeds"])
        job["graphs"].append({"library": str(g["library"]), "options": g["options"],
                              "inputs": str(workdir / f"in{i}.npz"), "outputs": str(workdir / f"out{i}.npz")})
    (workdir / "job.json").write_text(json.dumps(job))
    (workdir / "run.py").write_text(_AARCH64_SCRIPT)
    _run([qemu, "-cpu", cpu, "-L", str(root), str(root / "usr" / "bin" / "python3.11"), str(workdir / "run.py"),
          str(workdir / "job.json")], "qemu-aarch64 run")
    return [dict(np.load(workdir / f"out{i}.npz")) for i in range(len(graphs))]


def run_armv7_graph(library: Path, options: Mapping[str, Any], feeds: Mapping[str, np.ndarray],
                    workdir: Path, cpu: Optional[str] = None) -> Dict[str, np.ndarray]:
    """Run one armv7 library under qemu-arm through ``tvm_vm_driver``, honouring the graph
    options (input order, dtypes, fixed ``batch`` chunking with zero padding, ``entry``);
    ``cpu``: the qemu CPU model to emulate (e.g. "cortex-a9"; default qemu's "max")."""
    from .armv7 import run_armv7

    inputs, outputs = list(options["inputs"]), list(options["outputs"])
    dtypes = options.get("dtypes") or {}
    arrays = [np.ascontiguousarray(feeds[n], dtype=np.dtype(dtypes.get(n, "float32"))) for n in inputs]
    entry, batch = str(options.get("entry", "main")), options.get("batch")

    def call(chunk: list) -> list:
        outs = run_armv7(Path(library), chunk, workdir, entry=entry, timeout=QEMU_TIMEOUT_S, cpu=cpu)
        if len(outs) != len(outputs):
            raise RuntimeError(f"{Path(library).name} returned {len(outs)} outputs under qemu-arm, options name "
                               f"{len(outputs)}: {outputs}")
        return outs

    values = run_fixed_batch(call, arrays, batch)
    return dict(zip(outputs, values))


def check_under_qemu(art: Any, target: Any, builds: Mapping[str, Any], atol: Optional[float] = None) -> Evidence:
    """Run every built graph of ``target`` under qemu (its CPU pinned) and compare with ONNX Runtime."""
    arch = target.arch
    cpu = qemu_cpu(target)
    if arch == "armv7":
        from .armv7 import driver_path

        try:
            driver_path()
        except ToolchainError as exc:
            raise ToolchainError(f"{ARMV7_GAP} ({exc})") from None
        _qemu("qemu-arm-static")
    feeds = reference_feeds(art)
    graphs = [{"library": b.library, "options": b.options, "feeds": feeds[role]} for role, b in builds.items()]
    with tempfile.TemporaryDirectory(prefix="edgeuq-qemu-") as tmp:
        if arch == "armv7":
            outs = [run_armv7_graph(g["library"], g["options"], g["feeds"], Path(tmp), cpu=cpu) for g in graphs]
        else:
            outs = run_aarch64(graphs, Path(tmp), cpu)
    errors: Dict[str, float] = {}
    tols: Dict[str, float] = {}
    rules: Dict[str, Any] = {}
    for (role, b), got in zip(builds.items(), outs):
        path = Path(art.trunk_path if role == "trunk" else art.head_path)
        j = judge(path, feeds[role], got, ort_outputs(path, feeds[role]), atol)
        errors[role], tols[role], rules[role] = j.max_error, j.tolerance, dict(j.detail)
        if not j.ok:
            raise TvmNumericsError(f"{role} library {b.library.name} for {target.name} differs under qemu from "
                                   f"ONNX Runtime: max {j.max_error:.3g} (accepted up to {j.tolerance:.3g}); "
                                   f"{dict(j.detail)}")
    worst = max(errors, key=lambda r: errors[r] / tols[r] if tols[r] else errors[r])
    detail: Dict[str, Any] = {"arch": arch, "emulator": target.qemu, "qemu_cpu": cpu, "max_abs_err": errors,
                              "tolerance": tols, "rule": rules}
    if arch == "armv7":
        detail["runner"] = "tvm_vm_driver (TVM C++ runtime cross-built from the wheels' sources)"
    return Evidence(how="qemu", reference="ONNX Runtime (same inputs and noise)", max_error=errors[worst],
                    tolerance=tols[worst], latency_ms=None, reason="emulated: not timed", detail=detail)
