"""The per-target tables (README.md, docs/targets.md, docs/profile.md), written from compile
evidence and ``edgeuq profile`` reports, never by hand.

    python scripts/target_table.py collect [--targets NAME ...]   # lower + record evidence (~10 min)
    python scripts/target_table.py profile                        # demo bundles profiled: host + localhost RPC
    python scripts/target_table.py render                         # evidence + reports -> table JSON -> markdown
    python scripts/target_table.py all [--quick]                  # collect, profile, then render (make bench)

``profile`` compiles the ``bearing-demo`` architecture (random weights) for ``x86-host`` twice: with
the board's default placement (TVM libraries for x86-64) and with placement by measurement
(``edgeuq compile``'s default); it profiles the TVM bundle on this host and over a TVM RPC server it
starts on 127.0.0.1, and the measured-placement bundle on this host, and stores each
``LatencyReport`` (no plots, no per-operator tables: small) under ``results/profile/<name>/``.
``render`` adds to the lowering table a column with the latency those reports measured for each
target (labelled host / TVM RPC / emulated; "not measured" where no report covers it) and writes
the per-report stage table ``results/profiles.json`` (``<!-- table:profiles -->``).

``collect`` lowers the ``bearing-demo`` architecture (random weights: numerics and speed do
not depend on training) for every (lowerer, target) pair that some board in
``boards/`` places a graph on, and writes each lowering's typed evidence
(:class:`edgeuq.lower.Evidence`), compile time and artifact size to
``results/lowering_evidence.json``. ``render`` turns that into the table JSON
``results/lowering.json`` and runs ``scripts/render_tables.py`` on README.md and
docs/targets.md, which rewrites their ``<!-- table:lowering -->`` regions.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from edgeuq_runtime.atomic import atomic_write  # noqa: E402
DEFAULT_JSON = ROOT / "results" / "lowering_evidence.json"
TABLE_JSON = ROOT / "results" / "lowering.json"
DOCS = (ROOT / "README.md", ROOT / "docs" / "targets.md")
SAMPLES = 16
PROFILE_DIR = ROOT / "results" / "profile"
PROFILE_JSON = ROOT / "results" / "profiles.json"
PROFILE_DOCS = (ROOT / "docs" / "profile.md",)
PROFILE_COMMAND = "python scripts/target_table.py all"


def placements() -> List[tuple]:
    """Sorted unique (lowering, target) pairs that the boards use."""
    from edgeuq.catalog import load_boards

    pairs = {(p.lowering, p.target) for b in load_boards().values() for _, p in b.graphs.items()}
    return sorted(pairs, key=lambda p: (p[1], p[0]))


def _demo_artifact(work: Path, head_only: bool) -> Any:
    import torch

    from edgeuq.catalog import get_recipe
    from edgeuq.export import export_onnx
    from edgeuq.models import ModelConfig, SignalTransformer
    from edgeuq.training import save_checkpoint

    torch.manual_seed(0)
    rec = get_recipe("bearing-demo")
    model = dict(rec.model)
    if head_only:
        model["stochastic_blocks"] = []
    cfg = ModelConfig.from_dict(model, input_length=int(rec.data["window"]), num_classes=len(rec.data["classes"]))
    ck = save_checkpoint(SignalTransformer(cfg).eval(), work / "ck", tuple(rec.data["classes"]),
                         float(rec.data["fs_hz"]))
    return export_onnx(ck, work / "onnx")


def collect(out: Path, only: List[str], command: str = "", prov: Any = None) -> Dict[str, Any]:
    from edgeuq.catalog import get_target
    from edgeuq.lower import CompileSettings, get_lowerer

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeuq-targets-") as tmp:
        arts = {}
        for lowering, target_name in placements():
            if only and target_name not in only:
                continue
            target = get_target(target_name)
            lw = get_lowerer(lowering)
            roles = ["head"] if target.kind == "fpga" else ["trunk", "head"]
            head_only = target.kind == "fpga"
            if head_only not in arts:
                arts[head_only] = _demo_artifact(Path(tmp) / f"model-{int(head_only)}", head_only)
            art = arts[head_only]
            print(f"[{lowering}:{target_name}] lowering {'+'.join(roles)}", flush=True)
            t0 = time.perf_counter()
            row: Dict[str, Any] = {"target": target_name, "kind": target.kind, "arch": target.arch,
                                   "part": target.fpga_part, "lowering": lowering, "graphs": roles,
                                   "model": "bearing-demo" + (" (head-only stochastic)" if head_only else "")}
            try:
                res = lw.lower(art, target, Path(tmp) / f"{lowering}-{target_name}",
                               lw.options_for(CompileSettings(samples=SAMPLES), roles))
            except Exception as exc:  # recorded, not hidden: the table says it failed and why
                row.update(compiled=False, error=f"{type(exc).__name__}: {exc}"[:500])
            else:
                files = [getattr(res, r).file for r in roles] + list(res.extra_files.values())
                row.update(compiled=True, seconds=round(time.perf_counter() - t0, 1),
                           bytes=sum(Path(f).stat().st_size for f in files),
                           evidence=res.evidence.to_json(), tuning=res.metadata.get("tuning"))
            rows.append(row)
    import edgeuq
    from edgeuq.profile.harness import cpu_name

    from edgeuq.provenance import finish

    doc = {"kind": "edgeuq-target-evidence", "version": 1, "samples": SAMPLES,
           "host": {"machine": platform.machine(), "processor": cpu_name(), "cores": os.cpu_count(),
                    "python": platform.python_version()},
           "edgeuq": edgeuq.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "rows": rows}
    if prov is not None:
        doc["command"], doc["provenance"] = command, finish(prov)
    if only and out.is_file():  # a partial run replaces only its own rows
        done = {(r["lowering"], r["target"]) for r in rows}
        kept = [r for r in json.loads(out.read_text())["rows"] if (r["lowering"], r["target"]) not in done]
        doc["rows"] = sorted(kept + rows, key=lambda r: (r["target"], r["lowering"]))
    try:
        import tvm

        doc["tvm"] = tvm.__version__
    except ImportError:
        pass
    atomic_write(out, json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out} ({len(rows)} rows)")
    return doc


def _mb(n: Any) -> str:
    return "-" if n is None else f"{n / 1e6:.2f} MB"


def table_rows(doc: Dict[str, Any]) -> List[List[str]]:
    """One row per (lowering, target) of ``doc`` (the JSON written by :func:`collect`)."""
    out = []
    for r in doc["rows"]:
        arch = r["arch"] if r["kind"] != "fpga" else f"FPGA {r['part']}"
        what = f"{r['lowering']} ({'+'.join(r['graphs'])})"
        if not r["compiled"]:
            out.append([r["target"], arch, what, f"NO: {r['error']}", "-", "-", "-", "-", "-"])
            continue
        ev = r["evidence"]
        how = ev["label"] + (f" (`-cpu {ev['detail'].get('qemu_cpu')}`)" if ev["how"] == "qemu" else "")
        if ev["how"] == "compile-only" and ev["reason"]:
            how += f": {ev['reason']}"
        err = "-" if ev["max_error"] is None else f"{ev['max_error']:.2g} (tol {ev['tolerance']:.2g})"
        if ev["latency_ms"] is not None:
            lat = f"{ev['latency_ms']:.2f} ms (this host)"
        else:
            lat = "not measured" + (f" ({ev['reason']})" if ev["how"] != "compile-only" and ev["reason"] else "")
        for name, est in (ev.get("estimates") or {}).items():
            if "fits" in est:
                lat += f"; {name.replace('_', ' ')} fit: {est['fits']} (estimate)"
        out.append([r["target"], arch, what, f"yes ({r['seconds']:.0f} s)", how, _mb(r["bytes"]), err,
                    ev["reference"] or "-", lat])
    return out


def load_profiles(folder: Path = PROFILE_DIR) -> List[Any]:
    """Every LatencyReport stored under ``folder`` (each verified on load), sorted by folder name."""
    from edgeuq.profile.report import LatencyReport

    if not folder.is_dir():
        return []
    return [LatencyReport.load(d) for d in sorted(folder.iterdir()) if (d / LatencyReport.META_FILE).is_file()]


def profile_cell(reports: List[Any], target: str, graphs: List[str], samples: int = SAMPLES,
                 lowering: str = "") -> str:
    """What the profile reports measured for graphs ``graphs`` compiled for ``target`` (by ``lowering``,
    when given) at S=``samples``:
    the end-to-end median where the report has it, else the graphs' medians (TVM RPC times the graphs
    only), each with its source label; "not measured" when no report covers the target."""
    from edgeuq.profile.report import source_label

    parts = []
    for r in reports:
        per = r.stages.get(str(samples))
        if per is None or not graphs or any(r.targets.get(g) != target for g in graphs):
            continue
        if lowering and any(r.lowerings.get(g) != lowering for g in graphs):
            continue
        e2e = r.end_to_end.get(str(samples))
        if e2e is not None:
            parts.append(f"{source_label(r)}: {e2e['median_ms']:.2f} ms end to end")
        else:
            got = [f"{g} {per[g]['median_ms']:.2f}" for g in graphs if g in per]
            parts.append(f"{source_label(r)}: " + (" + ".join(got) + " ms (graphs only)" if got else "not measured"))
    return "; ".join(parts) or "not measured"


def render_profiles(reports: List[Any], docs=PROFILE_DOCS, samples: int = SAMPLES) -> None:
    """``results/profiles.json`` (one row per report, stage by stage) and its docs regions."""
    from edgeuq.profile.report import profile_table

    if not reports:
        print(f"no profile reports under {PROFILE_DIR}: run `{PROFILE_COMMAND}` first")
        return
    places = "; ".join(f"results/profile/{Path(r.directory).name}: {r.measured_where}" for r in reports)
    env = next((r.environment for r in reports if r.location == "host"), reports[0].environment)
    cpu = f"{env.get('processor', '?')}, {env.get('cores', '?')} cores shared with other jobs"
    run = PROFILE_DIR / "provenance.json"
    if not run.is_file():
        raise SystemExit(f"{run} not found: the profile reports were not made by `{PROFILE_COMMAND}`; rerun it")
    rec = json.loads(run.read_text())
    note = (f"edgeuq profile on {cpu}, 1 thread, 1 window, {reports[0].repeats} repeats after {reports[0].warmup} "
            f"warm-up; bearing-demo architecture, random weights; TVM libraries compiled with the shipped tuning "
            f"database where it has the target, 0 new trials; {places}")
    table = profile_table(reports, samples, rec["command"])
    from edgeuq.provenance import write_results

    write_results(PROFILE_JSON, {k: v for k, v in table.items() if k not in ("command", "provenance")},
                  rec["command"], {**rec["provenance"], "note": note})
    print(f"wrote {PROFILE_JSON}")
    import subprocess

    subprocess.run([sys.executable, str(ROOT / "scripts" / "render_tables.py"), *map(str, docs)], check=True)


def _write_json(path: Path, doc: Dict[str, Any]) -> None:
    atomic_write(path, json.dumps(doc, indent=2) + "\n")
    print(f"wrote {path}")


def profile(out: Path = PROFILE_DIR, samples=(1, SAMPLES), repeats: int = 30, warmup: int = 5,
            command: str = PROFILE_COMMAND, prov: Any = None) -> None:
    """Compile the demo architecture for x86-host (default placement = TVM; and placement by
    measurement), profile on this host and over a localhost TVM RPC server; reports under ``out``."""
    import shutil

    from tvm import rpc

    from edgeuq.lower.compile import compile_board
    from edgeuq.profile.cli import profile_bundle

    with tempfile.TemporaryDirectory(prefix="edgeuq-profile-") as tmp:
        art = _demo_artifact(Path(tmp) / "model", head_only=False)
        runs = ROOT / "runs" / "target-table"
        bundles = {}
        for name, placement in (("x86-host-tvm", "default"), ("x86-host-measured", "auto")):
            print(f"[profile] compiling {name} (placement {placement})", flush=True)
            res = compile_board("x86-host", art, runs / name, samples=SAMPLES, placement=placement,
                                tuning_root=Path(tmp) / "db", overwrite=True, progress=lambda m: print("  " + m))
            bundles[name] = res.bundle.root
        jobs = [("host-x86-host-tvm", bundles["x86-host-tvm"], None),
                ("rpc-x86-host-tvm", bundles["x86-host-tvm"], "rpc"),
                ("host-x86-host-measured", bundles["x86-host-measured"], None)]
        srv = rpc.Server("127.0.0.1", port=9090, port_end=9199)
        try:
            for name, bundle, via in jobs:
                dest = out / name
                if dest.exists():
                    shutil.rmtree(dest)
                print(f"[profile] {name}", flush=True)
                profile_bundle(bundle, dest, samples=samples, warmup=warmup, repeats=repeats, operators=False,
                               plot=False, remote=f"127.0.0.1:{srv.port}" if via == "rpc" else None)
        finally:
            srv.terminate()
    if prov is not None:
        from edgeuq.provenance import finish

        _write_json(out / "provenance.json", {"command": command, "provenance": finish(prov)})


def _tuning_states(rows: List[Dict[str, Any]]) -> str:
    """``x86-64: tuned (shipped database); others untuned`` from the evidence rows' tuning states."""
    states = {r["target"]: r["tuning"] for r in rows if r.get("tuning") is not None}  # lowerers that tune
    special = [f"{t}: {st}" for t, st in sorted(states.items()) if st != "untuned"]
    return "; ".join(special + (["others untuned"] if len(special) < len(states) else [])) or "untuned"


def render(json_path: Path, docs=DOCS) -> None:
    from edgeuq.report import results_table

    doc = json.loads(json_path.read_text())
    reports = load_profiles()
    host = doc["host"]
    if "provenance" not in doc:
        raise SystemExit(f"{json_path} has no provenance record: rerun `python scripts/target_table.py all`")
    table = {
        "command": doc["command"],
        "provenance": {**doc["provenance"], "note": (
            f"{host['processor']}, edgeuq {doc['edgeuq']}, TVM {doc.get('tvm', '-')}; bearing-demo architecture, "
            f"random weights, TVM tuning per target: {_tuning_states(doc['rows'])}; raw evidence in "
            f"results/{json_path.name}")},
        **results_table(
            ["target", "arch", "lowering (graphs)", "compiled", "checked how", "artifact", "max err (tolerance)",
             "reference", f"latency (1 window, S={doc['samples']})", f"profiled (edgeuq profile, S={doc['samples']})"],
            [row + [profile_cell(reports, r["target"], r["graphs"], doc["samples"], r["lowering"])]
             for row, r in zip(table_rows(doc), doc["rows"])],
            note=("Latency is measured only where the code runs natively on this host; emulated, simulated "
                  "and compile-only artifacts say \"not measured\", and FPGA resource fit is an analytic "
                  "estimate. \"profiled\" comes from the edgeuq profile reports in results/profile/ (host, "
                  "TVM RPC, or emulated qemu: not board times; regenerate them with "
                  f"`{PROFILE_COMMAND}`), \"not measured\" where no report covers the target.")),
    }
    atomic_write(TABLE_JSON, json.dumps(table, indent=2) + "\n")
    print(f"wrote {TABLE_JSON} ({len(table['rows'])} rows)")
    import subprocess

    subprocess.run([sys.executable, str(ROOT / "scripts" / "render_tables.py"), *map(str, docs)], check=True)
    render_profiles(reports)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("collect", "profile", "render", "all"))
    p.add_argument("--out", "--json", dest="json", type=Path, default=DEFAULT_JSON)
    p.add_argument("--targets", nargs="*", default=[], help="only these targets (collect)")
    p.add_argument("--quick", action="store_true", help="profile with 10 repeats after 2 warm-up (mode quick)")
    a = p.parse_args(argv)
    from edgeuq.provenance import command_line, start

    prov = start("quick" if a.quick else "full", 1)
    command = command_line("scripts/target_table.py", argv)
    repeats, warmup = (10, 2) if a.quick else (30, 5)
    if a.command in ("collect", "all"):
        collect(a.json, a.targets, command, prov)
    if a.command in ("profile", "all"):
        profile(repeats=repeats, warmup=warmup, command=command, prov=prov)
    if a.command in ("render", "all"):
        render(a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
