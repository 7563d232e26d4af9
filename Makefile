# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv, install edgeuq + edgeuq-runtime, run the main job
#   make test   - same install, then the whole test suite
SHELL  := /bin/bash
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.edgeuq-installed
FULL   := $(VENV)/.edgeuq-full-installed

.PHONY: demo test test-other-isa test-emulated-isa install bench bench-quick clean

$(STAMP): pyproject.toml runtime/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch is pinned: 2.13.0 is a CPU wheel on local disk; anything else may pull a CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e "runtime[onnxruntime,test]" -e ".[test]"
	touch $(STAMP)

# The tests also need the lowering toolchains: TVM + hls4ml extras, cross compilers and
# qemu (Debian packages), the device runtime's own pynq environment (numpy<2), Chromium for the
# live-view tests and PostgreSQL for the distributed-search tests.
$(FULL): $(STAMP) scripts/setup_toolchains.sh edgeuq/lower/toolchain/setup_toolchains.sh scripts/setup_pynq_env.sh \
         scripts/setup_browser.sh scripts/setup_postgres.sh
	$(BIN)/python -m pip install --quiet -e "runtime[ota]" -e ".[test,tvm,fpga,ota,text,search]"
	bash scripts/setup_toolchains.sh
	bash scripts/setup_pynq_env.sh
	bash scripts/setup_browser.sh
	bash scripts/setup_postgres.sh
	touch $(FULL)

install: $(FULL)

demo: $(STAMP)
	$(BIN)/edgeuq demo

test: $(FULL)
	$(BIN)/python scripts/isa_env.py
	$(BIN)/python -m pytest -q

# The suite again with the other x86 kernels forced on this machine (AVX-512 host -> AVX2, AVX2 host
# -> SSE): PyTorch, oneDNN, numpy and edgeuq's own host-ISA detection (scripts/isa_env.py).
test-other-isa: $(FULL)
	eval "$$($(BIN)/python scripts/isa_env.py --other)" && $(BIN)/python scripts/isa_env.py && $(BIN)/python -m pytest -q

# ONNX Runtime has no ISA switch: on an AVX-512 host its ISA-sensitive tests (marker isa_kernels) run
# again inside qemu-x86_64 with an AVX2 CPU model, where every library takes its AVX2 kernels.
ISA_KERNEL_TESTS := tests/test_quant_apply.py
test-emulated-isa: $(FULL)
	@cpu=$$($(BIN)/python scripts/isa_env.py --qemu-cpu); \
	if [ -n "$$cpu" ]; then \
	  echo "== ISA-sensitive tests under qemu-x86_64 -cpu $$cpu (AVX2, no AVX-512)"; \
	  qemu-x86_64-static -cpu $$cpu $(BIN)/python -m pytest -q -p no:cacheprovider -m isa_kernels $(ISA_KERNEL_TESTS) \
	    2> >(grep -v "TCG doesn't support requested feature" >&2); \
	else echo "== this host has no AVX-512: ONNX Runtime's AVX2 kernels already ran in make test"; fi

# Regenerate every results/*.json (each from the command it names, provenance written by the
# script: mode, commit, CPU/ISA, threads, load, date) and the tables in README/docs.
bench: $(FULL)
	$(BIN)/python scripts/bench_all.py --mode full

bench-quick: $(FULL)
	$(BIN)/python scripts/bench_all.py --mode quick

clean:
	rm -rf $(VENV) .venv-pynq .toolchains runs
