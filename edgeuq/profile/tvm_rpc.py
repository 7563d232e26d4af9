"""TVM graphs on a board over TVM RPC, and per-kernel tables of TVM graphs on this host.

Remote (``location="remote"``): connect to a board's ``tvm.rpc`` server directly
(``--remote HOST:PORT``) or through a tracker (``--tracker HOST:PORT --key K``),
upload each of the bundle's compiled libraries, load it in a
``relax.VirtualMachine`` on ``remote.cpu()``, set its inputs and time it with
``time_evaluator("invoke_stateful")`` (one time per repeat, after warm-up calls).
Only the graphs are timed remotely: the runtime's numpy stages (validation,
normalisation, noise drawing, decomposition) run in the board's Python and are not
reachable over RPC; the report says so.

Host: :func:`tvm_kernel_table` times every VM call instruction (kernels and VM
builtins) of a library loaded here, through ``vm.set_instrument``. TVM 0.27 has no
Relax VM profiler, and an instrument is a local Python function that cannot be sent
over RPC, so there is no per-kernel table for remote boards (the report says so).

TVM RPC is unauthenticated remote code execution: run the server bound to 127.0.0.1
on the board and reach it through an SSH tunnel (``docs/profile.md``).
"""
from __future__ import annotations

import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from edgeuq_runtime.bundle import load_bundle
from edgeuq_runtime.noise import sample_noise_for_sample

from .harness import LatencyStats
from .report import stats_dict

#: executors whose graphs TVM RPC can load and time (a TVM library); a graph of another
#: executor is not timed remotely (a note says so)
RPC_EXECUTORS = frozenset({"tvm"})


def rpc_timeable(backend: str, options: Optional[Mapping[str, Any]]) -> bool:
    """True for a graph TVM RPC can time: a CPU library of an :data:`RPC_EXECUTORS` executor."""
    return backend in RPC_EXECUTORS and dict(options or {}).get("device", "cpu") == "cpu"

__all__ = ["EMULATED_FUNC", "remote_emulation", "parse_address", "connect", "graph_inputs", "profile_remote",
           "tvm_kernel_table", "REMOTE_NOTES", "RemoteProfile", "time_remote_library", "rpc_board_cpu"]

#: the global function an emulated RPC server registers; it returns a description of the emulator
EMULATED_FUNC = "edgeuq.rpc.emulated"


def remote_emulation(session: Any) -> Optional[str]:
    """The emulator description a server declares (``None`` for a server that declares none:
    a board)."""
    try:
        fn = session.get_function(EMULATED_FUNC)
    except AttributeError:  # TVM raises AttributeError("Module has no function ...") for a missing global
        return None
    return str(fn())

REMOTE_NOTES = (
    "remote: only the TVM graphs are timed (time_evaluator over RPC); validate_normalize, noise and decompose run "
    "in numpy in the board's Python and are not measured over RPC - run `edgeuq profile --bundle B` on the board "
    "(location host) for them",
    "remote: no per-kernel table - TVM 0.27 has no Relax VM profiler and vm.set_instrument takes a local Python "
    "function, which cannot be sent over RPC",
)


#: LLVM's names of x86 features whose /proc/cpuinfo names differ
_LLVM_FLAG_NAMES = {"sse4.1": "sse4_1", "sse4.2": "sse4_2", "sse3": "pni"}


def rpc_board_cpu(session: Any) -> Tuple[Optional[str], Optional[frozenset], str]:
    """``(machine, flags, source)`` of the board behind a TVM RPC ``session``: the machine from the
    process triple of its TVM's LLVM, the flags of the CPU model that LLVM detects there (the
    model's features as LLVM knows them, ``/proc/cpuinfo`` names, not the kernel's own list);
    ``(None, None, why)`` when its TVM has no LLVM (a runtime-only build) or names no model."""
    try:
        name = str(session.get_function("tvm.codegen.llvm.GetHostCPUName")())
        triple = str(session.get_function("tvm.codegen.llvm.GetProcessTriple")())
    except AttributeError:  # TVM raises AttributeError("Module has no function ...") for a missing global
        return None, None, "the board's TVM RPC server has no LLVM to name its CPU (a runtime-only TVM)"
    machine = triple.split("-", 1)[0] or None
    if not name or name == "generic":
        return machine, None, f"the board's TVM RPC server: LLVM names no CPU model ({triple})"
    import tvm

    target = tvm.target.Target({"kind": "llvm", "mcpu": name, "mtriple": triple})
    features = tvm.get_global_func("target.llvm_get_cpu_features")(target)
    flags = frozenset(_LLVM_FLAG_NAMES.get(str(k), str(k)) for k in features)
    return machine, flags, f"the board's TVM RPC server: LLVM CPU {name}, {triple}"


def parse_address(text: str, what: str = "--remote") -> Tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} must be HOST:PORT (e.g. 127.0.0.1:9090), got {text!r}")
    return host, int(port)


def tvm_server_key(key: str, what: str = "--key") -> str:
    """``key`` as a TVM RPC server key: refused when it names the timing agents' pool
    (``edgeuq-agent.K``, :mod:`edgeuq_runtime.tracker`), which holds no TVM RPC server."""
    from edgeuq_runtime.tracker import AGENT_KEY_PREFIX

    if str(key).startswith(AGENT_KEY_PREFIX):
        raise ValueError(f"{what} {key!r} is the tracker pool of edgeuq timing agents, not of TVM RPC servers: TVM RPC "
                         f"runs on the servers of key {key[len(AGENT_KEY_PREFIX):]!r}; the agents are reached with "
                         "edgeuq search --tracker T --tracker-key K (or --agent HOST:PORT)")
    return key


def connect(remote: Optional[str] = None, tracker: Optional[str] = None, key: Optional[str] = None,
            timeout_s: int = 60) -> Tuple[Any, str]:
    """An RPC session and a description of where it leads (``"rpc 127.0.0.1:9090"``,
    ``"tracker host:9190 key rasp4"``)."""
    if (remote is None) == (tracker is None):
        raise ValueError("give exactly one of --remote HOST:PORT or --tracker HOST:PORT --key K")
    if tracker is not None and not key:
        raise ValueError("--tracker needs --key (the device key the board's server registered)")
    if tracker is not None:
        tvm_server_key(key)
    host, port = parse_address(tracker, "--tracker") if tracker is not None else parse_address(remote, "--remote")
    from tvm import rpc

    if tracker is not None:
        return rpc.connect_tracker(host, port).request(key, session_timeout=timeout_s), \
            f"tracker {host}:{port} key {key}"
    return rpc.connect(host, port, session_timeout=timeout_s), f"rpc {host}:{port}"


def graph_inputs(bundle: Any, role: str, samples: int, batch: int, seed: int = 0) -> List[np.ndarray]:
    """Inputs of the ``role`` graph in the order of the library's parameters (option ``inputs``):
    the trunk gets ``batch`` N(0, 1) windows (z-scored), the head ``samples * batch`` rows of
    features and noise drawn from the manifest's noise specs."""
    m = bundle.manifest
    spec = m.trunk if role == "trunk" else m.head
    opts = spec.options or {}
    names = list(opts.get("inputs") or spec.inputs)
    shapes = opts.get("shapes") or {}
    dtypes = opts.get("dtypes") or {}
    rng = np.random.default_rng(seed)
    if role == "trunk":
        if m.input.is_tokens:
            x = rng.integers(1, max(2, int(m.input.vocab_size)), size=(batch, m.input.length))
        else:
            x = rng.standard_normal((batch, m.input.length))
            x = (x - x.mean(axis=1, keepdims=True)) / x.std(axis=1, keepdims=True)
        return [np.ascontiguousarray(x, dtype=dtypes.get(names[0], "int64" if m.input.is_tokens else "float32"))]
    rows = samples * batch
    noise: Dict[str, List[np.ndarray]] = {}
    for _ in range(samples):
        for k, v in sample_noise_for_sample(m.noise, batch, rng).items():
            noise.setdefault(k, []).append(v)
    feeds = {k: np.concatenate(v, axis=0) for k, v in noise.items()}
    if m.feature_name not in shapes:
        raise ValueError(f"bundle {bundle.root}: the head's options give no shape for {m.feature_name!r}")
    feeds[m.feature_name] = rng.standard_normal((rows, *shapes[m.feature_name]))
    return [np.ascontiguousarray(feeds[n], dtype=dtypes.get(n, "float32")) for n in names]


class RemoteProfile(dict):
    """``{str(S): {role: stats}}`` plus ``outputs`` (role -> first output of the last call, for checks)."""

    outputs: Dict[str, np.ndarray]


def _fixed_batch_rows(opts: Mapping[str, Any], rows: int, flags: frozenset = frozenset()) -> Tuple[str, int, int]:
    """(function, rows per call, calls) for a library compiled for a fixed batch or shape buckets (the
    executor chunks and pads: ``call_plan``, for the per-ISA library a board with CPU ``flags`` runs);
    a plan that mixes buckets is timed as calls of its first (largest) one, an over-estimate."""
    from edgeuq_runtime.executors.tvm import call_plan

    plan = call_plan(opts, rows, flags=flags)
    return plan[0][0], plan[0][1], len(plan)


def profile_remote(session: Any, bundle_dir: Any, samples: Sequence[int], *, warmup: int = 3, repeats: int = 30,
                   batch: int = 1, seed: int = 0) -> Tuple[RemoteProfile, Dict[str, str], List[str]]:
    """Time the bundle's TVM graphs on the remote CPU; returns (times, backends, notes)."""
    from tvm import relax, runtime

    bundle = load_bundle(bundle_dir, verify=True)
    m = bundle.manifest
    dev = session.cpu()
    backends = {"trunk": m.trunk.backend or m.backend, "head": m.head.backend or m.backend}
    notes: List[str] = list(REMOTE_NOTES)
    vms: Dict[str, Any] = {}
    board_flags: Optional[frozenset] = None      # asked of the board only when a graph has per-ISA variants
    for role, spec in (("trunk", m.trunk), ("head", m.head)):
        if backends[role] not in RPC_EXECUTORS:
            notes.append(f"remote: the {role} graph runs on {backends[role]!r}, not a TVM library: not timed over "
                         f"RPC (run `edgeuq profile --bundle B` on the board)")
            continue
        if (spec.options or {}).get("device", "cpu") != "cpu":
            notes.append(f"remote: the {role} graph is a {spec.options.get('device')} library; only CPU libraries "
                         "are timed over RPC here")
            continue
        path = bundle.listed_path(spec.file, f"{role} graph")
        if (spec.options or {}).get("variants") and board_flags is None:
            _, known, said = rpc_board_cpu(session)
            board_flags = known if known is not None else frozenset()
            if known is None:
                notes.append(f"remote: {said}; per-ISA variants not chosen: the graphs' own (lowest-ISA) "
                             "libraries are timed")
        from edgeuq_runtime.executors.tvm import call_plan

        chosen = call_plan(spec.options or {}, 1, path=path, flags=board_flags or frozenset())
        if chosen.library != path.name:
            notes.append(f"remote: {role}: the board runs {chosen.choice}")
            path = bundle.listed_path(chosen.library, f"{role} graph ISA variant")
        session.upload(str(path), target=f"edgeuq-{role}-{path.name}")
        vms[role] = relax.VirtualMachine(session.load_module(f"edgeuq-{role}-{path.name}"), dev)
    if not vms:
        raise ValueError(f"bundle {bundle.root} has no CPU TVM library to time over RPC (graphs run on "
                         f"{sorted(set(backends.values()))}); run `edgeuq profile --bundle B` on the board instead")
    out = RemoteProfile()
    out.outputs = {}
    for s in samples:
        per: Dict[str, Dict[str, float]] = {}
        for role, vm in vms.items():
            spec = m.trunk if role == "trunk" else m.head
            opts = spec.options or {}
            rows = batch if role == "trunk" else int(s) * batch
            entry, per_call, calls = _fixed_batch_rows(opts, rows, board_flags or frozenset())
            if per_call == rows:
                arrays = graph_inputs(bundle, role, int(s) if role == "head" else 1, batch, seed)
            else:  # a fixed-batch library: one call of its batch (values do not change its time)
                arrays = graph_inputs(bundle, role, 1, per_call, seed)
            vm.set_input(entry, *[runtime.tensor(a, dev) for a in arrays])
            for _ in range(warmup):
                vm.invoke_stateful(entry)
            timer = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=repeats)
            res = timer(entry)
            times = [float(t) * 1e3 * calls for t in res.results]
            per[role] = stats_dict(LatencyStats.from_samples(times, f"{role} S={s}"))
            got = vm.get_outputs(entry)
            first = got[0] if isinstance(got, (list, tuple)) or type(got).__name__ == "Array" else got
            out.outputs[role] = first.numpy()
            if calls > 1:
                notes.append(f"remote: {role} S={s}: library compiled for batch {per_call}; one call timed and "
                             f"multiplied by the {calls} calls the executor makes")
        out[str(s)] = per
    return out, backends, notes


def time_remote_library(session: Any, library: Any, arrays: Sequence[np.ndarray], *, entry: str = "main",
                        warmup: int = 3, repeats: int = 20, calls: int = 1, name: str = "") -> LatencyStats:
    """Upload one TVM library to the RPC ``session``, run it on ``arrays`` there and time it with
    ``time_evaluator("invoke_stateful")`` (one time per repeat, after ``warmup`` calls); each time is
    multiplied by ``calls`` (a fixed-batch library called that many times per inference)."""
    from pathlib import Path as _Path

    from tvm import relax, runtime

    path = _Path(library)
    dev = session.cpu()
    remote_name = f"edgeuq-{path.parent.name}-{path.name}"
    session.upload(str(path), target=remote_name)
    vm = relax.VirtualMachine(session.load_module(remote_name), dev)
    vm.set_input(entry, *[runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays])
    for _ in range(warmup):
        vm.invoke_stateful(entry)
    res = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=repeats)(entry)
    return LatencyStats.from_samples([float(t) * 1e3 * calls for t in res.results], name)


def tvm_kernel_table(library: Any, arrays: Sequence[np.ndarray], *, warmup: int = 3, repeats: int = 20,
                     entry: str = "main") -> Tuple[List[Dict[str, Any]], int]:
    """Per-kernel rows of a TVM library run here: every VM call instruction timed through
    ``vm.set_instrument`` over ``repeats`` calls after ``warmup`` (dropped). Times include the
    Python callback (about a microsecond per instruction). Rows: ``name`` (the function's
    symbol), ``op`` (``kernel`` or ``vm builtin``), ``calls_per_run``, ``us_per_run``, ``share``."""
    import tvm
    from tvm import relax

    dev = tvm.cpu()
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), dev)
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays]
    acc: Dict[str, List[float]] = {}      # symbol -> kernel µs summed per kept run
    calls: Dict[str, int] = {}
    started: Dict[str, List[float]] = {}
    state = {"run": 0}

    def instrument(func: Any, symbol: str, before: bool, ret: Any, *rest: Any) -> None:
        now = time.perf_counter()
        if before:
            started.setdefault(symbol, []).append(now)
            return
        t0 = started[symbol].pop()
        run = state["run"] - warmup
        if run >= 0:
            acc.setdefault(symbol, [0.0] * repeats)[run] += (now - t0) * 1e6
            calls[symbol] = calls.get(symbol, 0) + 1

    vm.set_instrument(instrument)
    for i in range(warmup + repeats):
        state["run"] = i
        vm[entry](*args)
    total = sum(sum(v) for v in acc.values())
    rows = [{"name": k, "op": "vm builtin" if k.startswith("vm.builtin.") else "kernel",
             "calls_per_run": calls[k] / repeats, "us_per_run": sum(v) / repeats, "median_us": float(np.median(v)),
             "share": sum(v) / total if total > 0 else 0.0} for k, v in acc.items()]
    rows.sort(key=lambda r: (-r["us_per_run"], r["name"]))
    return rows, repeats
