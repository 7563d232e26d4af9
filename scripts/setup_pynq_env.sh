#!/usr/bin/env bash
# The device runtime's own environment for the PYNQ executor: .venv-pynq.
#
# pynq 4.0 pins numpy<2 and grpcio/protobuf versions that break the host's onnx,
# so it cannot live in .venv. This environment holds what a PYNQ board's Python
# would: numpy<2, pynq 4.0.0, onnxruntime (the trunk runs on the board's CPU),
# pytest, and edgeuq-runtime installed editable. The PYNQ executor tests
# (runtime/tests/test_rt_pynq*.py) run here against a *simulated* device whose
# DMA is served by the hls4ml C-simulation library (tests/test_pynq_env.py
# drives them from the host suite).
#
# Idempotent: a stamp holds a hash of this script and runtime/pyproject.toml; when it
# matches and the imports work, nothing is done. Safe to run as root on a fresh machine.
# Environment: PYTHON (default python3, >= 3.9), EDGEUQ_PYNQ_ENV (default .venv-pynq).
set -euo pipefail
cd "$(dirname "$0")/.."

ENV_DIR="${EDGEUQ_PYNQ_ENV:-.venv-pynq}"
PY="${PYTHON:-python3}"
STAMP="$ENV_DIR/.edgeuq-pynq-installed"
# onnx (for the runtime's test helpers) must be a release whose generated code accepts
# protobuf 5.x, which pynq's grpcio-tools pins.
PINS=("numpy<2" "pynq==4.0.0" "onnx>=1.15,<1.18" "onnxruntime>=1.16" "pytest>=7")

want="$(cat scripts/setup_pynq_env.sh runtime/pyproject.toml | sha256sum | cut -c1-16)"
check_imports() {
    "$ENV_DIR/bin/python" - <<'EOF'
import numpy, onnx, onnxruntime, pytest, pynq, edgeuq_runtime
assert int(numpy.__version__.split(".")[0]) < 2, f"numpy {numpy.__version__} in the pynq environment"
assert pynq.__version__.startswith("4.0"), f"pynq {pynq.__version__}"
EOF
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && check_imports 2>/dev/null; then
    echo "setup_pynq_env: $ENV_DIR is up to date"
    exit 0
fi

start=$(date +%s)
if [ ! -x "$ENV_DIR/bin/python" ]; then
    echo "setup_pynq_env: creating $ENV_DIR with $("$PY" --version 2>&1)"
    "$PY" -m venv "$ENV_DIR"
fi
rm -f "$STAMP"
# pynq 4.0.0 is an sdist; its setup.py imports setuptools (and distutils' shim).
"$ENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check "setuptools>=68,<81" wheel
"$ENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check "${PINS[@]}" -e "runtime[pynq,onnxruntime]"
check_imports
echo "$want" > "$STAMP"
echo "setup_pynq_env: $ENV_DIR ready in $(( $(date +%s) - start )) s"
