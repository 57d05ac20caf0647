# The project's commands. `make test` works from a fresh clone with nothing installed by hand.
PYTHON_SYS ?= python3
VENV       := .venv
PY         := $(VENV)/bin/python
PIP        := $(VENV)/bin/pip
TORCH_VERSION      := 2.13.0
TORCH_CUDA_VERSION := 2.14.1
# make wheel TORCH=2.14.1: a wheel for another torch release (tools/build_wheel.sh); empty: the venv's torch.
TORCH ?=
DEPS := numpy pybind11 'scikit-build-core>=1.1' cmake ninja pytest scipy \
        torchdiffeq==0.2.5 torchsde==0.2.6 torchode==1.0.1 tqdm matplotlib
SOURCES := $(shell find csrc python tools/build_meta -type f \( -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.py' \) 2>/dev/null) \
           CMakeLists.txt pyproject.toml

.PHONY: all venv build test demo bench microbench cuda-check fuzz wheel clean

all: test

# torch first and pinned (a CPU build on disk here), so nothing later pulls another torch.
$(VENV)/.deps-stamp: Makefile
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q $(DEPS)
	touch $@

venv: $(VENV)/.deps-stamp

# --no-build-isolation: compile against the torch installed in the venv. pip -v shows CMake's configure
# summary and one "[n/28] Building CXX object ..." line per compiled file.
$(VENV)/.build-stamp: $(VENV)/.deps-stamp $(SOURCES)
	@echo "fastdiffeq: compiling the C++ extension (a fresh build takes 2-3 minutes on 2 cores)"
	$(PIP) install -v --no-build-isolation --no-deps .
	touch $@

build: $(VENV)/.build-stamp

test: build
	$(PY) -m pytest -q tests

# The main job: train a CNF on 8gaussians (tqdm progress, plot to examples/out/cnf_toy.png, NLL vs the floor).
demo: build
	$(PY) examples/cnf_toy.py

bench: build
	$(PY) benchmarks/bench_forward.py
	$(PY) benchmarks/bench_vdp.py
	$(PY) benchmarks/bench_cnf.py

# A long fuzz campaign of every op and entry point (tests/fuzz; CI runs a short one in tests/test_fuzz.py).
fuzz: build
	$(PY) -m tests.fuzz --calls $${FDE_FUZZ_CALLS:-2000} --workers $${FDE_FUZZ_WORKERS:-2}

microbench: venv
	bash benchmarks/cpp/run_microbench.sh $(PY)

cuda-check: venv
	bash tools/cuda_check.sh $(PY) $(TORCH_CUDA_VERSION)

# dist/fastdiffeq-<version>+torch<X.Y>.<cpu|cuNNN>-...whl, pinned to torch==X.Y.* (README: "Wheels").
ifeq ($(strip $(TORCH)),)
wheel: venv
	FASTDIFFEQ_LOCAL_VERSION=1 $(PIP) wheel -v --no-build-isolation --no-deps . -w dist
else
wheel:
	bash tools/build_wheel.sh $(PYTHON_SYS) $(TORCH) dist
endif

clean:
	rm -rf build dist $(VENV)/.build-stamp
