"""Run the PYNQ executor tests in the runtime's own environment (.venv-pynq).

pynq 4.0 needs numpy<2 and cannot live in the host environment, so its tests run in
a subprocess with that environment's Python (created by scripts/setup_pynq_env.sh,
which ``make test`` runs). This host test first lowers a tiny head with hls4ml and
packs a bundle (trunk on onnxruntime, head on ``pynq``) plus reference values, then
runs runtime/tests/test_rt_pynq*.py against it on the simulated device, and fails if
anything there fails, errors or is skipped.

Without the environment the test is skipped on a developer machine, and fails in CI
(``CI=true``), where setup_pynq_env.sh must have run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ENV_PYTHON = REPO / ".venv-pynq" / "bin" / "python"
PYNQ_TESTS = sorted(str(p.relative_to(REPO)) for p in (REPO / "runtime" / "tests").glob("test_rt_pynq*.py"))


def _env_python() -> Path:
    if ENV_PYTHON.is_file():
        return ENV_PYTHON
    msg = f"the pynq environment {ENV_PYTHON.parent.parent} is missing: run bash scripts/setup_pynq_env.sh"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def _build_fixture(root: Path) -> Path:
    """bundle/ (trunk.onnx + head.fpga.json + fpga/...), reference.npz and report.json in ``root``."""
    from require_extras import require_extra

    require_extra("hls4ml", "fpga")
    import onnxruntime as ort

    from edgeuq_runtime import GraphSpec, InputSpec, Manifest, write_bundle
    from edgeuq_runtime.noise import sample_noise
    from edgeuq_runtime.preprocess import normalize
    from test_lower_hls4ml import build_tiny_fpga

    _, art, compiled, _ = build_tiny_fpga()
    head_file = compiled.head.file.name
    manifest = Manifest(
        model_name="tiny-fpga", model_version="0.0.1",
        input=InputSpec(length=art.input_length, sample_rate_hz=art.sample_rate_hz, normalization=art.normalization),
        class_names=art.class_names, default_samples=8, noise=art.noise,
        trunk=GraphSpec("trunk.onnx", (art.input_name,), (art.feature_name,), backend="onnxruntime"),
        head=GraphSpec(head_file, (art.feature_name, *[n.name for n in art.noise]), (art.logits_name,),
                       backend=compiled.head.executor, options=compiled.head.options),
        feature_name=art.feature_name, logits_name=art.logits_name,
        metadata={"target": compiled.target, "fpga": compiled.evidence.detail["checks"]},
    )
    sources = {"trunk.onnx": compiled.trunk.file, head_file: compiled.head.file, **compiled.extra_files}
    write_bundle(root / "bundle", manifest, sources)

    # float reference for a few windows, with the noise the runtime will draw for the same seed
    seed, samples = 5, 8
    windows = np.random.default_rng(11).standard_normal((4, art.input_length)).astype(np.float32)
    trunk = ort.InferenceSession(str(art.trunk_path), providers=["CPUExecutionProvider"])
    feats = trunk.run([art.feature_name], {art.input_name: normalize(windows, art.normalization)})[0]
    noise = sample_noise(art.noise, samples * len(windows), np.random.default_rng(seed))
    head = ort.InferenceSession(str(art.head_path), providers=["CPUExecutionProvider"])
    logits = head.run([art.logits_name], {art.feature_name: np.tile(feats, (samples, 1)), **noise})[0]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs = (probs / probs.sum(-1, keepdims=True)).reshape(samples, len(windows), -1).mean(0)
    np.savez(root / "reference.npz", windows=windows, seed=seed, samples=samples, float_logits=logits,
             float_prediction=probs.argmax(-1))
    (root / "report.json").write_text(json.dumps(compiled.evidence.detail["checks"], indent=2))
    return root


def test_pynq_runtime_tests_pass_in_their_own_environment(tmp_path):
    python = _env_python()
    assert PYNQ_TESTS, "no runtime/tests/test_rt_pynq*.py found"
    fixture = _build_fixture(tmp_path)
    junit = tmp_path / "junit.xml"
    env = {**os.environ, "EDGEUQ_PYNQ_FIXTURE": str(fixture), "PYTHONDONTWRITEBYTECODE": "1"}
    # only this checkout's runtime (the environment may hold an editable install of another tree):
    # the host's PYTHONPATH (host-only packages) must not leak in
    env["PYTHONPATH"] = str(REPO / "runtime")
    proc = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-rs", "-s", "-p", "no:cacheprovider", f"--junitxml={junit}", *PYNQ_TESTS],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout[-6000:] + proc.stderr[-3000:]
    sys.stdout.write(out)  # shown with -s or on failure
    assert proc.returncode == 0, f"pynq-environment tests failed (exit {proc.returncode}):\n{out}"
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    assert counts["tests"] >= 9 and counts["failures"] == counts["errors"] == 0, counts
    assert counts["skipped"] == 0, f"pynq-environment tests were skipped: {counts}\n{out}"
