#!/usr/bin/env bash
# Installs what the lowering tests need, idempotently (a second run skips finished steps):
#   1. Debian packages: aarch64 + armv7 hard-float cross compilers, qemu user-mode emulators;
#   2. an aarch64 sysroot with Python 3.11 (Debian arm64 debs) + the aarch64 TVM/numpy wheels,
#      so cross-compiled aarch64 libraries run under qemu-aarch64 through the real runtime;
#   3. ptxas from CUDA 12.9 (PyPI wheel): nvcc 13 dropped sm_53/sm_72, ptxas 12.9 still has them;
#   4. the TVM C++ runtime + a small Relax VM driver cross-built for armv7 hard-float from the
#      runtime sources shipped in the wheels (edgeuq/lower/toolchain/native/), so Cortex-A9 libraries run
#      under qemu-arm (PyPI has no armv7 TVM wheel).
# Everything but the Debian packages goes to $EDGEUQ_TOOLCHAINS (default: <repo>/.toolchains,
# git-ignored). Runs as root from `make test` (CI) on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/../../.."
REPO=$(pwd)
TC=${EDGEUQ_TOOLCHAINS:-$REPO/.toolchains}
PY=${PYTHON_VENV:-$REPO/.venv/bin/python}
mkdir -p "$TC"
log() { echo "[setup_toolchains] $*"; }
t_all=$(date +%s)
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

# --- 1. Debian packages ------------------------------------------------------------------------
APT_PKGS="gcc-aarch64-linux-gnu g++-aarch64-linux-gnu gcc-arm-linux-gnueabihf g++-arm-linux-gnueabihf qemu-user-static"
sh scripts/apt_install.sh --tag setup_toolchains --quiet $APT_PKGS

# --- 2. aarch64 sysroot with Python 3.11 + TVM ---------------------------------------------------
SYSROOT=$TC/aarch64-py311
if [ ! -f "$SYSROOT/.done" ]; then
  t=$(date +%s); log "building the aarch64 Python sysroot in $SYSROOT"
  rm -rf "$SYSROOT" "$TC/debs-arm64"; mkdir -p "$SYSROOT" "$TC/debs-arm64"
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $SUDO dpkg --add-architecture arm64
  fi
  $SUDO apt-get update -qq
  DEBS="python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libgcc-s1 libstdc++6 libexpat1
        zlib1g libffi8 libbz2-1.0 liblzma5 libcrypt1 libuuid1 libssl3 libsqlite3-0 libtinfo6 libncursesw6
        libreadline8 libdb5.3 libnsl2 libtirpc3"
  (cd "$TC/debs-arm64" && apt-get download -qq -o APT::Sandbox::User=root $(for d in $DEBS; do echo "$d:arm64"; done))
  for deb in "$TC"/debs-arm64/*.deb; do dpkg -x "$deb" "$SYSROOT"; done
  "$PY" -m pip install --quiet --target "$SYSROOT/site" --platform manylinux_2_28_aarch64 --python-version 3.11 \
      --implementation cp --only-binary=:all: --no-deps \
      apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1 numpy==2.4.6 ml_dtypes==0.6.0 typing_extensions==4.16.0
  rm -rf "$TC/debs-arm64"
  qemu-aarch64-static -L "$SYSROOT" "$SYSROOT/usr/bin/python3.11" -c \
      "import sys; sys.path.insert(0, '$SYSROOT/site'); import numpy, tvm, platform; print('aarch64 python ok:', platform.machine(), 'tvm', tvm.__version__, 'numpy', numpy.__version__)"
  touch "$SYSROOT/.done"
  log "aarch64 sysroot ready in $(( $(date +%s) - t )) s"
else
  log "aarch64 sysroot present ($SYSROOT)"
fi

# --- 3. ptxas from CUDA 12.9 -----------------------------------------------------------------------
CUDA12=$TC/cuda12
if [ ! -x "$CUDA12/nvidia/cuda_nvcc/bin/ptxas" ]; then
  t=$(date +%s); log "installing ptxas 12.9 (nvidia-cuda-nvcc-cu12) into $CUDA12"
  rm -rf "$CUDA12"
  "$PY" -m pip install --quiet --target "$CUDA12" --no-deps nvidia-cuda-nvcc-cu12==12.9.86
  chmod +x "$CUDA12/nvidia/cuda_nvcc/bin/ptxas"
  log "ptxas ready in $(( $(date +%s) - t )) s"
else
  log "ptxas 12.9 present"
fi

log "all toolchains ready in $(( $(date +%s) - t_all )) s ($TC)"

# --- 4. armv7: a TVM C++ runtime + driver, cross-built for qemu-arm ------------------------------
# No armv7 TVM wheel exists: edgeuq.lower.tvm.armv7 cross-compiles the runtime sources shipped in
# the installed apache-tvm / apache-tvm-ffi wheels (Relax VM, library loader, CPU device) plus
# edgeuq/lower/toolchain/native/ (missing support headers + tvm_vm_driver.cc) with arm-linux-gnueabihf-g++
# (hard-float) into $TC/armv7-tvm-runtime. From scratch ~2.5-3.5 min on 2 cores; skipped while the
# sources, flags and wheel versions are unchanged (stamp in .done).
ARMV7RT=$TC/armv7-tvm-runtime
t=$(date +%s)
if EDGEUQ_TOOLCHAINS="$TC" "$PY" -c "import sys; from edgeuq.lower.tvm.armv7 import up_to_date; sys.exit(0 if up_to_date() else 1)"; then
  log "armv7 TVM runtime driver present ($ARMV7RT)"
else
  log "cross-building the armv7 TVM runtime driver into $ARMV7RT"
  EDGEUQ_TOOLCHAINS="$TC" "$PY" -m edgeuq.lower.tvm.armv7
  log "armv7 TVM runtime driver ready in $(( $(date +%s) - t )) s"
fi
