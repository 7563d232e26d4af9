"""FPGA lowering through hls4ml: the stochastic head becomes an AXI-stream IP for a Zynq.

The :class:`Hls4mlLowerer` (registered as ``"hls4ml"``, options :class:`Hls4mlOptions`):

1. reads ``head.onnx`` back into an MLP spec and checks it against ONNX Runtime
   (:mod:`.head`); a head it cannot represent fails here, with the reason;
2. builds the hardware model — one float32 stream row ``[features | noise_1 | ...]``
   in, logits out — and converts it with hls4ml's **VivadoAccelerator** backend
   (io_parallel, ``axi_stream`` interface, float on the wire, ap_fixed inside), with
   per-layer fixed-point types from the quantization plan ``precision`` when given;
3. runs the pitfall guards (:mod:`.pitfalls`), writes the HLS project and
   compiles the C-simulation library (g++);
4. checks the C simulation on probe rows against the quantized reference and the float
   head (ONNX Runtime), reporting max error and argmax agreement, and refuses a
   C simulation that is further from the quantized reference than ``tolerance``;
5. writes what the user needs to synthesise and deploy: the HLS project with the
   Vivado scripts (one archive), the PYNQ driver, a README, a canary file and a
   resource/latency **estimate** (analytic, labelled as such: no Vivado here);
6. records an attempt at the trunk (it does not convert correctly; see
   :func:`.pitfalls.attempt_trunk`).

The head graph of the result is ``head.fpga.json`` for the runtime's ``pynq``
executor (Overlay + AXI DMA); the trunk stays ONNX for the board's CPU. The compiled
graph's file belongs at the bundle root; ``extra_files`` keep their names
(``fpga/...``), which the descriptor refers to.
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import tarfile
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np

from ..base import (
    CompiledArtifact, CompiledGraph, CompileSettings, Evidence, Lowerer, options_from_kwargs, register_lowerer,
)
from ..toolchain import ToolchainError
from .estimate import choose_reuse_factors, estimate
from .head import (
    SIGMOID_TABLE_SIZE, HeadSpec, HeadTypes, build_hardware_module, float_forward, pack_rows, quantized_reference,
    read_head_spec, resolve_types, verify_spec, DEFAULT_ACCUM, DEFAULT_DATA, DEFAULT_WEIGHT,
)
from .pitfalls import attempt_trunk, check_all

__all__ = ["Hls4mlLowerer", "Hls4mlOptions", "compile_hls4ml", "FpgaTargetError", "FpgaNumericsError",
           "DESCRIPTOR_FORMAT", "DMA_PATH"]

DESCRIPTOR_FORMAT = "edgeuq-pynq-head"
DESCRIPTOR_FILE = "head.fpga.json"
DMA_PATH = "hier_0/axi_dma_0"  # hls4ml's block design groups the DMA and the IP into hier_0
# max |C-sim - quantized reference| accepted: 0.02 + 0.02 * max|float logit| unless ``tolerance`` is given
TOLERANCE_ABS, TOLERANCE_REL = 0.02, 0.02


@dataclass(frozen=True, eq=False)
class Hls4mlOptions:
    """Options of the hls4ml lowering.

    ``precision`` (``{layer: "ap_fixed<W,I>"}``, e.g. from a quantization plan),
    ``reuse_factor`` (int or ``"auto"``: fit the part's DSPs), ``data_precision`` /
    ``weight_precision`` / ``accum_precision``, ``probe_rows``, ``seed``, ``tolerance``
    (default 0.02 + 2% of the largest float logit), ``trunk`` (``"attempt"`` or
    ``"skip"``), ``project_name``, ``include_csim`` (ship the x86-64 C-simulation
    library for host-side simulation), ``board_part`` (Vivado board part when the
    target's part differs from hls4ml's template), ``calibration`` (windows for the
    probe features).
    """

    precision: Optional[Mapping[str, Any]] = None
    reuse_factor: Union[int, str] = "auto"
    data_precision: str = DEFAULT_DATA
    weight_precision: str = DEFAULT_WEIGHT
    accum_precision: str = DEFAULT_ACCUM
    probe_rows: int = 256
    seed: int = 0
    tolerance: Optional[float] = None
    trunk: str = "attempt"
    project_name: str = "edgeuq_head"
    include_csim: bool = True
    board_part: Optional[str] = None
    calibration: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        if self.trunk not in ("attempt", "skip"):
            raise ValueError(f"trunk option must be 'attempt' or 'skip', got {self.trunk!r}")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(self.project_name)):
            raise ValueError(f"project_name must be a C identifier, got {self.project_name!r}")


class FpgaTargetError(ValueError):
    """The target is not an FPGA target hls4ml can build for."""


class FpgaNumericsError(RuntimeError):
    """The C simulation disagrees with the quantized reference beyond the tolerance."""


def _hls4ml():
    try:
        import hls4ml
    except ImportError as exc:  # pragma: no cover - the fpga extra is part of the test install
        raise ToolchainError(f"hls4ml not found ({exc}); it is needed to lower the head for an FPGA. "
                             "Install it with: pip install 'edgeuq[fpga]'") from None
    return hls4ml


def _board_templates(hls4ml) -> Dict[str, dict]:
    path = Path(hls4ml.__file__).parent / "backends" / "vivado_accelerator" / "supported_boards.json"
    return json.loads(path.read_text())


def _family(part: str) -> str:
    p = part.lower()
    if p.startswith("xc7z"):
        return "zynq-7000"
    if p.startswith(("xczu", "xck")):
        return "zynq-ultrascale+"
    return "other"


def pick_board_template(hls4ml, part: str) -> str:
    """The hls4ml VivadoAccelerator board template for ``part``: the template with that exact
    part, else one of the same device family (Zynq-7000 or Zynq UltraScale+)."""
    boards = {k: v for k, v in _board_templates(hls4ml).items() if "axi_stream" in v.get("python_drivers", {})}
    for name, b in boards.items():
        if b["part"].lower() == part.lower():
            return name
    fam = _family(part)
    same = [n for n, b in boards.items() if _family(b["part"]) == fam] if fam != "other" else []
    if not same:  # the others are PCIe (Alveo/XRT) shells, not a Zynq with a PYNQ DMA design
        raise FpgaTargetError(f"no hls4ml VivadoAccelerator template with a PYNQ driver for part {part!r} "
                              f"(family {fam}); templates: {[(n, b['part']) for n, b in boards.items()]}")
    return sorted(same)[0]


def _check_target(target) -> None:
    if getattr(target, "kind", None) != "fpga":
        raise FpgaTargetError(f"hls4ml lowering needs an FPGA target (kind 'fpga'), got {getattr(target, 'name', target)!r} "
                              f"of kind {getattr(target, 'kind', None)!r}")
    if not getattr(target, "fpga_part", None) or not getattr(target, "clock_mhz", None):
        raise FpgaTargetError(f"FPGA target {target.name!r} must set fpga_part and clock_mhz")


def _probe_inputs(art, spec: HeadSpec, rows: int, seed: int, calibration: Optional[np.ndarray]) -> Dict[str, np.ndarray]:
    """Features from the trunk on (calibration or z-scored random) windows, or token ids for a token
    model, and noise from the noise specs."""
    import onnxruntime as ort
    from edgeuq_runtime.noise import sample_noise
    from edgeuq_runtime.preprocess import normalize

    rng = np.random.default_rng(seed)
    n_win = max(1, min(rows, 64))
    dtype = np.dtype(getattr(art, "input_dtype", "float32"))
    if dtype.kind in "iu":  # a token model: random (or calibration) token ids, no normalization
        ids = rng.integers(1, int(art.vocab_size), size=(n_win, art.input_length)) if calibration is None \
            else np.asarray(calibration).reshape(-1, art.input_length)[:n_win]
        windows = ids.astype(dtype)
    elif calibration is None:
        windows = normalize(rng.standard_normal((n_win, art.input_length)).astype(np.float32), art.normalization)
    else:
        windows = normalize(np.asarray(calibration, np.float32).reshape(-1, art.input_length)[:n_win],
                            art.normalization)
    trunk = ort.InferenceSession(str(art.trunk_path), providers=["CPUExecutionProvider"])
    feats = trunk.run([art.feature_name], {art.input_name: windows})[0]
    feats = feats[np.arange(rows) % len(feats)]
    feeds = {spec.feature_name: feats.astype(np.float32)}
    feeds.update(sample_noise(art.noise, rows, rng))
    return feeds


def _hls_config(hls4ml, module, spec: HeadSpec, types: HeadTypes, roles: Mapping[str, str],
                reuse: Mapping[str, int]) -> dict:
    cfg = hls4ml.utils.config_from_pytorch_model(
        module, (spec.stream_width,), granularity="name", backend="VivadoAccelerator",
        default_precision=types.data.hls(), default_reuse_factor=1)
    names = set(cfg["LayerName"])
    if names != set(roles):
        raise RuntimeError(f"hls4ml named the head's layers {sorted(names)}, expected {sorted(roles)}; "
                           "the precision config would silently miss layers")
    data = types.data.hls()
    cfg["Model"]["Strategy"] = "Latency"
    for name, role in roles.items():
        layer = cfg["LayerName"][name]
        p = layer["Precision"]
        if role == "input":
            p["result"] = data
        elif role == "select":
            p.update(weight="ap_fixed<2,2>", bias="ap_fixed<2,2>", accum=data, result=data)
        elif role == "dense":
            t = types.dense[name]
            p.update(weight=t["weight"].hls(), bias=t["bias"].hls(), accum=t["accum"].hls(), result=t["result"].hls())
            rf = int(reuse.get(name, 1))
            layer["ReuseFactor"] = rf
            if rf > 1:
                layer["Strategy"] = "Resource"
        elif role == "scale":
            p.update(scale=types.scale.hls(), bias=types.scale.hls(), result=data)
        elif role == "sigmoid":
            p.update(result=data, table=types.table.hls())
            layer["TableSize"] = SIGMOID_TABLE_SIZE
        else:  # mul, relu
            p["result"] = data
    return cfg


def _adapt_part(hls_dir: Path, template_part: str, part: str, board_part: Optional[str]) -> bool:
    """Point project.tcl and design.tcl at ``part`` when the template was made for another part."""
    if template_part.lower() == part.lower():
        return False
    proj = hls_dir / "project.tcl"
    proj.write_text(re.sub(r'set part "[^"]*"', f'set part "{part}"', proj.read_text()))
    design = hls_dir / "design.tcl"
    lines = []
    for line in design.read_text().splitlines():
        if "create_project" in line and "-part" in line:
            line = re.sub(r"-part\s+\S+", f"-part {part}", line)
        elif line.strip().startswith("set_property board_part"):
            line = (f"set_property board_part {board_part} [current_project]" if board_part else
                    f"# edgeuq: the template's board_part was removed (template part {template_part}, target part "
                    f"{part}).\n# Set your board's board_part here (Vivado board files) so the PS presets apply.\n# {line}")
        lines.append(line)
    design.write_text("\n".join(lines) + "\n")
    return True


def _archive(src: Path, dest: Path) -> Path:
    """The HLS project as one deterministic tar.gz (without the host C-simulation build)."""
    dest.parent.mkdir(parents=True, exist_ok=True)

    def keep(ti: tarfile.TarInfo) -> Optional[tarfile.TarInfo]:
        if ti.name.endswith(".so") or "__pycache__" in ti.name:
            return None
        ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = 0, 0, 0, "", ""
        return ti

    with open(dest, "wb") as raw:
        import gzip

        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
            for path in sorted(p for p in src.rglob("*")):
                tar.add(str(path), arcname=f"{src.name}/{path.relative_to(src).as_posix()}", recursive=False, filter=keep)
    return dest


def _metrics(a: np.ndarray, b: np.ndarray) -> dict:
    return {"max_abs_error": float(np.max(np.abs(a - b))), "mean_abs_error": float(np.mean(np.abs(a - b))),
            "argmax_agreement": float(np.mean(a.argmax(-1) == b.argmax(-1)))}


def _readme(project: str, template: str, part: str, clock_mhz: float, adapted: bool, est: dict, checks: dict) -> str:
    r = est["resources"]
    return f"""# FPGA head ({project}) — synthesise, then deploy with PYNQ

Generated by edgeuq with hls4ml (VivadoAccelerator backend, template `{template}`{' adapted to part ' + part if adapted else ''}).
The stochastic head runs on the FPGA as an AXI-stream IP fed by an AXI DMA; the trunk
runs on the board's CPU. One stream row = `[features | noise inputs...]` (float32), one
result row = the logits (float32).

## Synthesise (needs Vivado/Vivado HLS; not done by edgeuq)

    tar xzf {project}_hls.tar.gz && cd {project}_hls
    vivado_hls -f build_prj.tcl "csim=1 synth=1 export=1"   # or vitis_hls
    vivado -mode batch -source design.tcl                    # block design + bitstream

Copy `{project}_vivado_accelerator/project_1.runs/impl_1/design_1_wrapper.bit` to
`fpga/{project}.bit` in the bundle and the block design's `design_1.hwh` to
`fpga/{project}.hwh` (PYNQ needs both, same stem). The runtime's `pynq` executor loads
that overlay (`pynq.Overlay`) and streams rows through `{DMA_PATH}`.
Target part {part}, HLS clock {clock_mhz} MHz.{'''
The Vivado script was written for another part of the same family: check the
board_part line in design.tcl.''' if adapted else ''}

`axi_stream_driver.py` is hls4ml's stand-alone PYNQ driver (not needed by the runtime).
`canary.npz` holds stream rows and the C-simulation's logits for them: the synthesised
overlay should reproduce them exactly (the float<->ap_fixed casts are the same).

## Estimate (analytic, NOT from synthesis)

DSP {r['dsp']}, LUT {r['lut']}, FF {r['ff']}, BRAM18 {r['bram_18k']}; fits: {est['fits']};
{est['latency']['cycles_per_row']} cycles per row ({est['latency']['us_per_row']} us at {clock_mhz} MHz), plus an
assumed {est['latency']['dma_call_overhead_us_assumed']} us per DMA call. See estimate.json.
{' '.join(est['notes'])}

## C simulation vs references (probe rows)

{json.dumps(checks, indent=2)}
"""


@register_lowerer("hls4ml")
class Hls4mlLowerer(Lowerer):
    """The stochastic MLP head -> an hls4ml VivadoAccelerator IP (see the module docstring)."""

    Options = Hls4mlOptions
    #: the hardware multiplies keep masks into the layer inputs (MC dropout); nothing else is sampled there
    noise_kinds = frozenset({"dropout_mask"})

    def options_for(self, settings: CompileSettings, roles: Sequence[str]) -> Hls4mlOptions:
        return Hls4mlOptions(precision=dict(settings.precision) if settings.precision else None)

    def lower(self, art: Any, target: Any, workdir: Path, options: Hls4mlOptions) -> CompiledArtifact:
        return _lower(art, target, Path(workdir), options)


def compile_hls4ml(art, target, workdir: Path, **options: Any) -> CompiledArtifact:
    """Keyword form of :meth:`Hls4mlLowerer.lower` (options as in :class:`Hls4mlOptions`)."""
    return _lower(art, target, Path(workdir), options_from_kwargs(Hls4mlOptions, "hls4ml", options))


def _lower(art, target, workdir: Path, o: Hls4mlOptions) -> CompiledArtifact:
    precision = o.precision
    _check_target(target)
    hls4ml = _hls4ml()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    project = o.project_name
    part, clock_mhz = str(target.fpga_part), float(target.clock_mhz)

    spec = read_head_spec(art.head_path, art.feature_name, [n.name for n in art.noise], art.logits_name)
    onnx_err = verify_spec(spec, art.head_path)
    types = resolve_types(spec, precision, data=o.data_precision,
                          weight=o.weight_precision,
                          accum=o.accum_precision)
    reuse = choose_reuse_factors(spec, types, part, o.reuse_factor)
    template = pick_board_template(hls4ml, part)
    template_part = _board_templates(hls4ml)[template]["part"]

    module, roles = build_hardware_module(spec)
    cfg = _hls_config(hls4ml, module, spec, types, roles, reuse)
    hls_dir = workdir / f"{project}_hls"
    if hls_dir.exists():
        shutil.rmtree(hls_dir)
    log = io.StringIO()
    log_path = workdir / "hls4ml.log"
    try:
        with contextlib.redirect_stdout(log):
            hls_model = hls4ml.converters.convert_from_pytorch_model(
                module, hls_config=cfg, output_dir=str(hls_dir), project_name=project, backend="VivadoAccelerator",
                board=template, part=part, clock_period=round(1000.0 / clock_mhz, 3), io_type="io_parallel",
                interface="axi_stream", driver="python", input_type="float", output_type="float")
            selectors = {n: m.weight.detach().numpy() for n, m in module.named_children() if roles.get(n) == "select"}
            check_all(hls_model, {**{l.name: l.weight for l in spec.layers}, **selectors})
            try:
                hls_model.compile()
            except Exception as exc:  # hls4ml raises a bare Exception when g++ fails
                raise RuntimeError(f"hls4ml could not build the C-simulation library of {project} (needs g++): "
                                   f"{exc}; the compiler output is in {log_path}") from exc
    finally:
        log_path.write_text(log.getvalue())
    adapted = _adapt_part(hls_dir, template_part, part, o.board_part)

    # -- numerics: C simulation vs quantized reference vs float head ----------------------------
    rows = int(o.probe_rows)
    feeds = _probe_inputs(art, spec, rows, int(o.seed), o.calibration)
    stream = pack_rows(spec, feeds)
    csim = np.asarray(hls_model.predict(stream), np.float32).reshape(rows, spec.num_classes)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(art.head_path), providers=["CPUExecutionProvider"])
    float_ref = sess.run([art.logits_name], {k: v.astype(np.float32) for k, v in feeds.items()})[0]
    quant_ref = quantized_reference(spec, types, feeds)
    approx = float_forward(spec, feeds, gelu_approx=True)
    checks = {
        "probe_rows": rows,
        "csim_vs_quantized_reference": _metrics(csim, quant_ref),
        "csim_vs_float_head": _metrics(csim, float_ref),
        "quantized_reference_vs_float_head": _metrics(quant_ref, float_ref),
        "gelu_approximation_vs_float_head": _metrics(approx, float_ref) if spec.activation == "gelu" else None,
        "onnx_readback_max_abs_error": onnx_err,
        "logit_range": [float(float_ref.min()), float(float_ref.max())],
    }
    tol = o.tolerance
    tol = float(TOLERANCE_ABS + TOLERANCE_REL * np.max(np.abs(float_ref)) if tol is None else tol)
    checks["tolerance"] = tol
    if not checks["csim_vs_quantized_reference"]["max_abs_error"] <= tol:
        raise FpgaNumericsError(
            f"hls4ml C simulation of {project} differs from the quantized reference by "
            f"{checks['csim_vs_quantized_reference']['max_abs_error']:.4g} > tolerance {tol:g} (argmax agreement "
            f"{checks['csim_vs_quantized_reference']['argmax_agreement']:.3f}); a silent conversion problem or "
            f"saturating types — see {workdir / 'hls4ml.log'}")

    # -- files for the bundle ---------------------------------------------------------------------
    fpga = workdir / "fpga"
    if fpga.exists():
        shutil.rmtree(fpga)
    fpga.mkdir()
    est = estimate(spec, types, part, clock_mhz, reuse)
    (fpga / "estimate.json").write_text(json.dumps(est, indent=2, sort_keys=True))
    shutil.copyfile(hls_dir / "axi_stream_driver.py", fpga / "axi_stream_driver.py")
    _archive(hls_dir, fpga / f"{project}_hls.tar.gz")
    n_canary = min(rows, 32)
    np.savez(fpga / "canary.npz", stream=stream[:n_canary], csim_logits=csim[:n_canary],
             float_logits=float_ref[:n_canary])
    extra = {f"fpga/{p.name}": p for p in sorted(fpga.iterdir())}
    csim_rel = None
    if o.include_csim:
        lib = sorted((hls_dir / "firmware").glob(f"{project}-*.so"))
        if len(lib) != 1:
            raise RuntimeError(f"expected one C-simulation library in {hls_dir / 'firmware'}, found {lib}")
        (fpga / "csim").mkdir()
        csim_rel = f"fpga/csim/{project}_csim_x86_64.so"
        shutil.copyfile(lib[0], workdir / csim_rel)
        extra[csim_rel] = workdir / csim_rel
    trunk_mode = o.trunk
    with contextlib.redirect_stdout(log):
        trunk = attempt_trunk(art.trunk_path, workdir) if trunk_mode == "attempt" else None
    log_path.write_text(log.getvalue())

    descriptor = {
        "format": DESCRIPTOR_FORMAT, "version": 1,
        "inputs": [{"name": n, "size": int(s)} for n, s in zip(spec.input_names, spec.input_sizes())],
        "outputs": [{"name": spec.logits_name, "size": spec.num_classes}],
        "stream": {"dtype": "float32", "words_in": spec.stream_width, "words_out": spec.num_classes},
        "bitfile": f"fpga/{project}.bit",
        "dma": DMA_PATH,
        "csim": None if csim_rel is None else {"library": csim_rel, "function": f"{project}_float",
                                                "arch": "x86_64"},
        "canary": "fpga/canary.npz",
        "hls": {"project": project, "hls4ml": hls4ml.__version__, "backend": "VivadoAccelerator",
                "board_template": template, "part": part, "clock_mhz": clock_mhz, "io_type": "io_parallel",
                "precision": types.to_json(), "reuse_factor": reuse},
    }
    desc_path = workdir / DESCRIPTOR_FILE
    desc_path.write_text(json.dumps(descriptor, indent=2, sort_keys=True))
    (fpga / "README.md").write_text(_readme(project, template, part, clock_mhz, adapted, est, checks))
    extra["fpga/README.md"] = fpga / "README.md"

    metadata = {
        "lowerer": "hls4ml", "hls4ml_version": hls4ml.__version__, "board_template": template,
        "template_part_adapted": adapted, "part": part, "clock_mhz": clock_mhz,
        "precision": types.to_json(), "precision_plan": dict(precision or {}), "reuse_factor": reuse,
        "activation": spec.activation,
        "gelu": ("approximated on the FPGA as z*sigmoid(1.702 z) (hls4ml 1.3 has no GELU)"
                 if spec.activation == "gelu" else None),
        "estimate": est, "trunk_fpga": trunk,
        "head_on_fpga": True, "trunk_on": "cpu (onnxruntime)",
    }
    evidence = Evidence(
        how="c-simulation", reference="fixed-point reference of the same types (numpy), on probe rows",
        max_error=checks["csim_vs_quantized_reference"]["max_abs_error"], tolerance=tol, latency_ms=None,
        reason="simulated: hls4ml C simulation on this host (not timed; no bitstream was built or run)",
        estimates={"fpga_resources": {"fits": est["fits"], "part": part,
                                      "how": "analytic estimate of DSP/LUT/FF/BRAM (no Vivado synthesis)"},
                   "fpga_latency_us_per_row": {"value": est["latency"]["us_per_row"],
                                               "how": "analytic estimate at the target clock"}},
        detail=json.loads(json.dumps({"checks": checks})))
    return CompiledArtifact(
        target=target.name, evidence=evidence,
        trunk=CompiledGraph(file=Path(art.trunk_path), executor="onnxruntime"),
        head=CompiledGraph(file=desc_path, executor="pynq", suffix=".fpga.json",
                           options={"bitfile": descriptor["bitfile"], "dma": DMA_PATH}),
        extra_files=extra,
        metadata=json.loads(json.dumps(metadata)),
    )
