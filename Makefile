# One command each on a fresh machine: `make demo` and `make test` create .venv and install.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.lmlab-installed
# torch first and pinned: 2.13.0 is a CPU build already on disk here; an unpinned torch
# would pull several GB of CUDA packages.
TORCH  ?= torch==2.13.0
EXTRAS ?= dev,hf,serve,embed

.PHONY: install demo test test-kvpress bench mutation lint format clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lmlab demo

test: $(STAMP)
	$(PY) -m pytest

# The KV bench's kvpress engine in its own venv (kvpress pins transformers<5.3, older than .venv's):
# torch pinned first, then lmlab with hf + kvpress; runs only the kvpress tests.
KVPRESS_VENV  ?= .venv-kvpress
KVPRESS_STAMP := $(KVPRESS_VENV)/.lmlab-installed

$(KVPRESS_STAMP): pyproject.toml Makefile
	test -x $(KVPRESS_VENV)/bin/python || python3 -m venv $(KVPRESS_VENV)
	$(KVPRESS_VENV)/bin/python -m pip install -q --upgrade pip
	$(KVPRESS_VENV)/bin/python -m pip install -q "$(TORCH)"
	$(KVPRESS_VENV)/bin/python -m pip install -q -e ".[dev,hf,kvpress]"
	touch $(KVPRESS_STAMP)

test-kvpress: $(KVPRESS_STAMP)
	$(KVPRESS_VENV)/bin/python -c "import kvpress"  # fail here, not as a silent skip
	$(KVPRESS_VENV)/bin/python -m pytest tests/studies/kvbench/test_kvbench_kvpress.py

# Mutation testing of the core modules the studies trust (slow; not part of `make test`):
# writes mutation/summary.md. MODULES="kv chat" limits it to some of them.
mutation: $(STAMP)
	nice -n 10 $(PY) mutation/run.py $(MODULES)

bench: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) bench/run_all.py

lint: $(STAMP)
	$(VENV)/bin/ruff check lmlab tests bench
	$(VENV)/bin/ruff format --check lmlab tests bench

format: $(STAMP)
	$(VENV)/bin/ruff check --fix lmlab tests bench
	$(VENV)/bin/ruff format lmlab tests bench

clean:
	rm -rf $(VENV) $(KVPRESS_VENV) .pytest_cache .ruff_cache
