# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv, install edgeuq + edgeuq-runtime, run the main job
#   make test   - same install, then the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.edgeuq-installed
FULL   := $(VENV)/.edgeuq-full-installed

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml runtime/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch is pinned: 2.13.0 is a CPU wheel on local disk; anything else may pull a CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e "runtime[onnxruntime,test]" -e ".[test]"
	touch $(STAMP)

# The tests also need the lowering toolchains: TVM + hls4ml extras, cross compilers and
# qemu (Debian packages), and the device runtime's own pynq environment (numpy<2).
$(FULL): $(STAMP) scripts/setup_toolchains.sh edgeuq/lower/toolchain/setup_toolchains.sh scripts/setup_pynq_env.sh
	$(BIN)/python -m pip install --quiet -e "runtime[ota]" -e ".[test,tvm,fpga,ota,text,search]"
	bash scripts/setup_toolchains.sh
	bash scripts/setup_pynq_env.sh
	touch $(FULL)

install: $(FULL)

demo: $(STAMP)
	$(BIN)/edgeuq demo

test: $(FULL)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/mc_overhead.py

clean:
	rm -rf $(VENV) .venv-pynq .toolchains runs
