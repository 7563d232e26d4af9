"""The ``pynq`` executor on a **simulated** PYNQ device (edgeuq_runtime.pynq_sim).

Runs in the runtime's own environment (.venv-pynq: numpy<2 + pynq 4.0, made by
scripts/setup_pynq_env.sh); where pynq is absent the whole module is skipped.

Two groups:

* a toy IP (a few lines of C compiled here with the system compiler) exercises the
  executor, pynq's real DMA driver and the simulated AXI DMA: results, chunking, and
  the failures a board would show (stalls, short buffers, missing bitstreams);
* the real thing, when ``EDGEUQ_PYNQ_FIXTURE`` names a bundle built on the host by
  tests/test_pynq_env.py: a head lowered by hls4ml, its C-simulation library serving
  the DMA. The executor must reproduce hls4ml's ``predict()`` exactly (the canary) and
  the float head within the fixed-point error the lowering reported.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rt_helpers import require_extra  # noqa: E402

# pynq lives only in .venv-pynq (numpy<2); tests/test_pynq_env.py runs this module there with
# EDGEUQ_PYNQ_FIXTURE set. In that run pynq must be present (CI fails otherwise); in the host
# environment the module is skipped on purpose.
pynq = require_extra("pynq", "the PYNQ tests run in .venv-pynq (tests/test_pynq_env.py drives them)",
                     needed="EDGEUQ_PYNQ_FIXTURE" in os.environ)

from edgeuq_runtime import GraphSpec, UncertaintyRuntime, load_bundle, write_bundle  # noqa: E402
from edgeuq_runtime.errors import BackendError, BundleError  # noqa: E402
from edgeuq_runtime.executors import load_graph  # noqa: E402
from edgeuq_runtime.noise import sample_noise, sample_noise_tiled  # noqa: E402
from edgeuq_runtime import pynq_sim  # noqa: E402

FIXTURE_ENV = "EDGEUQ_PYNQ_FIXTURE"

TOY_C = r"""
/* toy "IP": out[0] = sum(features * mask), out[1] = features[0] - mask[1] */
void toy_float(float *in, float *out) {
    float s = 0.0f;
    for (int i = 0; i < 4; i++) s += in[i] * in[4 + i];
    out[0] = s;
    out[1] = in[0] - in[5];
}
"""


def _toy_expected(rows: np.ndarray) -> np.ndarray:
    f, m = rows[:, :4], rows[:, 4:]
    return np.stack([(f * m).sum(1, dtype=np.float32), f[:, 0] - m[:, 1]], axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the toy IP")
    d = tmp_path_factory.mktemp("toy")
    (d / "toy.c").write_text(TOY_C)
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(d / "toy.so"), str(d / "toy.c")], check=True)
    desc = {
        "format": "edgeuq-pynq-head", "version": 1,
        "inputs": [{"name": "features", "size": 4}, {"name": "mask", "size": 4}],
        "outputs": [{"name": "logits", "size": 2}],
        "stream": {"dtype": "float32", "words_in": 8, "words_out": 2},
        "bitfile": "toy.bit", "dma": "hier_0/axi_dma_0",
        "csim": {"library": "toy.so", "function": "toy_float", "arch": "x86_64"},
    }
    (d / "head.fpga.json").write_text(json.dumps(desc))
    pynq_sim.write_simulated_bitstream(d / "toy.bit", d / "head.fpga.json")
    return d


@pytest.fixture
def device():
    dev = pynq_sim.attach()
    yield dev
    pynq_sim.detach(dev)


def _rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 8)).astype(np.float32)


# ------------------------------------------------------------------------------ the simulated device


def test_simulated_device_is_pynqs_active_device(device):
    assert pynq.Device.active_device is device
    assert device in pynq.Device.devices and isinstance(device, pynq.Device)
    buf = pynq.allocate((3, 5), np.float32)
    assert buf.physical_address and buf.shape == (3, 5) and device.memory_at(buf.physical_address, buf.nbytes) is not None


def test_executor_streams_rows_through_pynqs_dma_driver(toy_dir, device):
    head = load_graph("pynq", toy_dir / "head.fpga.json")
    assert type(head.dma).__module__ == "pynq.lib.dma"  # pynq's real DMA driver, on emulated registers
    assert head.input_names == ("features", "mask") and head.output_names == ("logits",)
    rows = _rows(37)
    out = head.run({"features": rows[:, :4], "mask": rows[:, 4:]})["logits"]
    assert out.dtype == np.float32 and np.array_equal(out, _toy_expected(rows))
    assert device.dma.rows_processed == 37


def test_chunked_transfers_give_the_same_result(toy_dir, device):
    rows = _rows(50, seed=1)
    whole = load_graph("pynq", toy_dir / "head.fpga.json").run_rows(rows)
    chunked = load_graph("pynq", toy_dir / "head.fpga.json", options={"max_rows": 7}).run_rows(rows)
    assert np.array_equal(whole, chunked) and np.array_equal(whole, _toy_expected(rows))


def test_hls4ml_driver_order_send_then_receive(toy_dir, device):
    """hls4ml's own driver sends first, then arms the receive channel."""
    ol = pynq.Overlay(str(toy_dir / "toy.bit"))
    dma = ol.hier_0.axi_dma_0
    rows = _rows(5, seed=2)
    ibuf, obuf = pynq.allocate((5, 8), np.float32), pynq.allocate((5, 2), np.float32)
    ibuf[:] = rows
    dma.sendchannel.transfer(ibuf)
    dma.recvchannel.transfer(obuf)
    dma.sendchannel.wait()
    dma.recvchannel.wait()
    assert np.array_equal(np.asarray(obuf), _toy_expected(rows)) and dma.recvchannel.transferred == 40


def test_incomplete_row_stalls_instead_of_hanging(toy_dir, device):
    ol = pynq.Overlay(str(toy_dir / "toy.bit"))
    dma = ol.hier_0.axi_dma_0
    ibuf, obuf = pynq.allocate((12,), np.float32), pynq.allocate((4,), np.float32)
    dma.recvchannel.transfer(obuf)
    dma.sendchannel.transfer(ibuf)  # 12 words = one row and a half
    dma.sendchannel.wait()
    with pytest.raises(pynq_sim.SimulatedDmaStall, match="a real board would hang"):
        dma.recvchannel.wait()


def test_receive_buffer_too_small_is_a_dma_error(toy_dir, device):
    ol = pynq.Overlay(str(toy_dir / "toy.bit"))
    dma = ol.hier_0.axi_dma_0
    ibuf, obuf = pynq.allocate((3, 8), np.float32), pynq.allocate((2, 2), np.float32)
    dma.recvchannel.transfer(obuf)
    dma.sendchannel.transfer(ibuf)
    assert dma.recvchannel.error


def test_errors_name_the_problem(toy_dir, device, tmp_path):
    head = load_graph("pynq", toy_dir / "head.fpga.json")
    with pytest.raises(BackendError, match="takes inputs"):
        head.run({"features": np.zeros((2, 4), np.float32)})
    with pytest.raises(BackendError, match=r"shape \(rows, 4\)"):
        head.run({"features": np.zeros((2, 5), np.float32), "mask": np.zeros((2, 4), np.float32)})
    with pytest.raises(BackendError, match="unknown options"):
        load_graph("pynq", toy_dir / "head.fpga.json", options={"bitstream": "x"})
    with pytest.raises(BackendError, match="synthesise the HLS project"):
        load_graph("pynq", toy_dir / "head.fpga.json", options={"bitfile": str(tmp_path / "none.bit")})
    real = tmp_path / "real.bit"
    real.write_bytes(b"\x00\x09\x0f\xf0 not json")
    with pytest.raises(BackendError, match="not a simulated bitstream"):
        load_graph("pynq", toy_dir / "head.fpga.json", options={"bitfile": str(real)})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(BackendError, match="is not an 'edgeuq-pynq-head' file"):
        load_graph("pynq", bad)


# ------------------------------------------------------------------------------ the hls4ml head (host-built bundle)


@pytest.fixture(scope="module")
def fpga_bundle(tmp_path_factory) -> Path:
    src = os.environ.get(FIXTURE_ENV)
    if not src:
        pytest.skip(f"{FIXTURE_ENV} not set (tests/test_pynq_env.py builds the hls4ml bundle and sets it)")
    bundle = tmp_path_factory.mktemp("fpga") / "bundle"
    shutil.copytree(Path(src) / "bundle", bundle)
    m = load_bundle(bundle).manifest
    bit = m.head.options["bitfile"]
    pynq_sim.write_simulated_bitstream(bundle / bit, bundle / m.head.file)
    # the bitstream arrives after the bundle was built (synthesis): seal it into the manifest,
    # since the runtime opens no file that is not listed and hashed
    write_bundle(bundle, m, {**{n: bundle / n for n in m.files}, bit: bundle / bit}, overwrite=True)
    return bundle


def test_unlisted_bitstream_is_refused(fpga_bundle, device, tmp_path):
    """A bitstream that is not listed in the manifest (or lies outside the bundle) is never loaded."""
    b = tmp_path / "b"
    shutil.copytree(fpga_bundle, b)
    m = load_bundle(b).manifest
    bit = m.head.options["bitfile"]
    files = {n: b / n for n in m.files if n != bit}
    write_bundle(b, m, files, overwrite=True)  # same bundle, bitstream no longer listed
    with pytest.raises(BundleError, match=r"is not listed in manifest.json files"):
        UncertaintyRuntime(b, verify=False)
    outside = GraphSpec(m.head.file, m.head.inputs, m.head.outputs, backend="pynq",
                        options={**m.head.options, "bitfile": str(fpga_bundle / bit)})
    write_bundle(b, dataclasses.replace(m, head=outside), files, overwrite=True)
    with pytest.raises(BundleError, match=r"outside the bundle"):
        UncertaintyRuntime(b)


def _fixture_file(name: str) -> Path:
    return Path(os.environ[FIXTURE_ENV]) / name


def test_hls4ml_head_on_simulated_device_equals_predict_exactly(fpga_bundle, device):
    m = load_bundle(fpga_bundle).manifest
    head = load_graph("pynq", fpga_bundle / m.head.file, options=m.head.options)
    canary = np.load(fpga_bundle / "fpga" / "canary.npz")  # hls4ml predict() outputs, written by the lowering
    out = head.run_rows(canary["stream"])
    assert np.array_equal(out, canary["csim_logits"])
    report = json.loads(_fixture_file("report.json").read_text())
    err = float(np.max(np.abs(out - canary["float_logits"])))
    agree = float(np.mean(out.argmax(1) == canary["float_logits"].argmax(1)))
    print(f"\npynq(sim) vs float head on the canary: max |err| {err:.4g}, argmax agreement {agree:.3f} "
          f"(lowering reported {report['csim_vs_float_head']})")
    assert err <= report["csim_vs_float_head"]["max_abs_error"] + 1e-6
    assert agree >= 0.9


def test_uncertainty_runtime_trunk_on_cpu_head_on_simulated_fpga(fpga_bundle, device):
    ref = np.load(_fixture_file("reference.npz"))
    rt = UncertaintyRuntime(fpga_bundle, seed=0)
    m = rt.manifest
    assert (m.trunk.backend, m.head.backend) == ("onnxruntime", "pynq")
    x, s = ref["windows"], int(ref["samples"])
    feats = rt.trunk_features(x)
    noise = sample_noise(m.noise, s * len(x), np.random.default_rng(int(ref["seed"])))
    tiled = np.tile(feats, (s, 1))
    logits = rt.head_logits(tiled, noise)
    # the same rows straight through the C-simulation library (what hls4ml's predict calls per row)
    desc = json.loads((fpga_bundle / m.head.file).read_text())
    lib = pynq_sim.CsimLibrary(fpga_bundle / desc["csim"]["library"], desc["csim"]["function"],
                               desc["stream"]["words_in"], desc["stream"]["words_out"])
    direct = lib.run(np.concatenate([tiled] + [noise[n.name] for n in m.noise], axis=1))
    assert np.array_equal(logits, direct)
    # and close to the float head the host computed on its own features and noise
    assert np.abs(logits - ref["float_logits"]).max() < 0.15
    # predict() = the same C-simulation rows for the noise the runtime draws, decomposed in float64
    seed = int(ref["seed"])
    r = rt.predict(x, samples=s, seed=seed)
    rt_noise = sample_noise_tiled(m.noise, s, len(x), np.random.default_rng(seed))
    rows = np.concatenate([tiled] + [rt_noise[n.name] for n in m.noise], axis=1)
    p = np.exp(lib.run(rows).astype(np.float64))
    p = (p / p.sum(-1, keepdims=True)).reshape(s, len(x), -1)
    np.testing.assert_allclose(r.samples, p, rtol=1e-9, atol=1e-12)
    assert np.array_equal(r.prediction, p.mean(0).argmax(-1))
    # the fixed-point head agrees with the float head (same noise) wherever the float head's margin
    # exceeds what the reported fixed-point error can move: every such window, not a fraction
    err = float(np.abs(logits - ref["float_logits"]).max())
    fp = np.exp(ref["float_logits"] - ref["float_logits"].max(-1, keepdims=True))
    fp = (fp / fp.sum(-1, keepdims=True)).reshape(s, len(x), -1).mean(0)
    top2 = np.sort(fp, axis=-1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    q = np.exp(logits.astype(np.float64) - logits.max(-1, keepdims=True))
    q = (q / q.sum(-1, keepdims=True)).reshape(s, len(x), -1).mean(0)
    sure = margin > 2 * (np.exp(2 * err) - 1)  # a logit error e moves each probability by < e^(2e) - 1
    assert np.array_equal(q.argmax(-1)[sure], ref["float_prediction"][sure]), (margin, err)
    assert np.array_equal(fp.argmax(-1), ref["float_prediction"])  # the reference is self-consistent
