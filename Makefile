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

.PHONY: all test bench env clean sanitize

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

# The c backend's tests against a copy of the package whose C extension is built with
# AddressSanitizer + UndefinedBehaviorSanitizer; any report aborts the run (so it fails).
SANITIZE_DIR := build/sanitize
SANITIZE_ENV := ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so)" PYTHONPATH=$(SANITIZE_DIR)
sanitize: $(STAMP)
	rm -rf $(SANITIZE_DIR) && mkdir -p $(SANITIZE_DIR)
	cp -r src/fastconv $(SANITIZE_DIR)/ && rm -f $(SANITIZE_DIR)/fastconv/_ckernels*
	FASTCONV_SANITIZE=1 $(PY) setup.py -q build_ext --force --build-lib $(SANITIZE_DIR) --build-temp build/sanitize-tmp
	$(SANITIZE_ENV) $(PY) -c "import fastconv._ckernels as m; assert '$(SANITIZE_DIR)' in m.__file__, m.__file__"
	$(SANITIZE_ENV) $(PY) -m pytest -q -p no:cacheprovider tests/test_c_backend.py
	$(SANITIZE_ENV) $(PY) -m pytest -q -p no:cacheprovider tests/test_conformance.py::test_matches_torch -k "c]"

clean:
	rm -rf $(VENV) build src/*.egg-info src/fastconv/_ckernels* .pytest_cache .hypothesis
