# Two commands do everything from a bare machine (Python, gcc, make, pip):
#   make bench   build the environment, then benchmark every backend against torch (quick suite)
#   make test    build the environment, then run the whole test suite
PYTHON     ?= python3
VENV       ?= .venv
# Pinned: an unpinned torch pulls a multi-GB CUDA build onto a CPU machine.
TORCH_SPEC ?= torch==2.13.0
THREADS    ?= 2
SUITE      ?= quick
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed

.PHONY: all test bench env clean

all: test

$(STAMP): pyproject.toml setup.py $(wildcard csrc/*.c csrc/*.h csrc/*.py)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test,bench]"
	touch $@

env: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(VENV)/bin/fastconv bench --suite $(SUITE) --threads $(THREADS)

clean:
	rm -rf $(VENV) build src/*.egg-info src/fastconv/_ckernels* .pytest_cache .hypothesis
