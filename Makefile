# Two commands do everything from a bare machine (Python, gcc, make, pip):
#   make bench   build the environment, then benchmark every backend against torch (quick suite)
#   make test    build the environment, then run the whole test suite
PYTHON     ?= python3
VENV       ?= .venv
# Pinned: an unpinned torch pulls a multi-GB CUDA build onto a CPU machine.
TORCH_SPEC ?= torch==2.13.0
THREADS    ?= 2
SUITE      ?= quick
# On quiet cores benchmarks keep each runtime's default wait policy (torch's OpenMP workers
# spin-wait between calls: torch at its fastest).  On cores other work keeps busy, `fastconv bench`
# measures the contention first and switches the runtimes to OMP_WAIT_POLICY=PASSIVE itself,
# saying so (spinning threads of one runtime starve the next); BENCH_ENV can still force either.
BENCH_ENV  ?=
RESULTS    ?= benchmarks/results
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed

.PHONY: all test lint bench bench-results bench-pytest asv env clean sanitize sanitize-build fuzz fuzz-c gpu-check \
	resources

all: test

$(STAMP): pyproject.toml setup.py $(wildcard csrc/*.c csrc/*.h csrc/*.py)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	rm -f src/fastconv/_ckernels*  # a failed compile must not leave the previous build in place
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test,bench]"
	@# The extension is optional for users; here a C compiler exists, so a failed build is an error.
	@if command -v $${CC:-cc} >/dev/null 2>&1; then $(PY) -c "import fastconv.backends.c as c; ok, why = c.available(); \
	  assert ok, 'the C extension did not build: ' + why + ' (python setup.py build_ext --inplace shows why)'"; fi
	touch $@

env: $(STAMP)

test: $(STAMP) lint
	$(PY) -m pytest

# Lint and format: ruff check, and ruff format --check (the tree is formatted; run `ruff format .`).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(BENCH_ENV) $(VENV)/bin/fastconv bench --suite $(SUITE) --threads $(THREADS)

# The committed results: every suite as JSON (+ plot), and the README's summary table.
bench-results: $(STAMP)
	mkdir -p $(RESULTS) docs/results
	for s in resnet50 conv-zoo pool-bn models; do \
	  $(BENCH_ENV) $(VENV)/bin/fastconv bench --suite $$s --threads $(THREADS) --quiet \
	    --json $(RESULTS)/$$s.json --plot $(RESULTS)/$$s.png || exit 1; \
	done
	$(BENCH_ENV) $(VENV)/bin/fastconv bench --suite training --direction fwd,bwd_data,bwd_weight --threads $(THREADS) \
	  --quiet --json $(RESULTS)/training.json --plot $(RESULTS)/training.png
	$(VENV)/bin/fastconv bench show $(RESULTS)/resnet50.json $(RESULTS)/conv-zoo.json $(RESULTS)/pool-bn.json \
	  $(RESULTS)/models.json $(RESULTS)/training.json --markdown docs/results/bench.md

# pytest-benchmark: one table per problem ranking the backends; each run is saved under
# .benchmarks/ and compared with the previous one.
bench-pytest: $(STAMP)
	$(BENCH_ENV) $(PY) -m pytest tests/perf --benchmark-only --benchmark-autosave \
	  --benchmark-group-by=group --benchmark-columns=min,median,iqr,ops,rounds \
	  $(if $(wildcard .benchmarks/*/*.json),--benchmark-compare)

# asv: record this commit with the current environment, then build the dashboard in .asv/html
# (view it with `$(VENV)/bin/asv preview`; history over many commits: docs/benchmarking.md).
asv: $(STAMP)
	$(VENV)/bin/asv machine --yes --machine $$(hostname) >/dev/null
	$(BENCH_ENV) $(VENV)/bin/asv run --python=same --set-commit-hash=$$(git rev-parse HEAD) --machine $$(hostname)
	$(VENV)/bin/asv publish
	@echo "dashboard written to .asv/html: run '$(VENV)/bin/asv preview' and open the address it prints"

# On a CUDA machine (offline is fine; no virtual environment, no C extension needed): the GPU tests
# and the GPU suites against cuDNN, JSON + plots + summary in $(GPU_RESULTS).  docs/gpu.md.
GPU_PYTHON  ?= python3
GPU_RESULTS ?= benchmarks/results/gpu
gpu-check:
	PYTHONPATH=src timeout 480 $(GPU_PYTHON) benchmarks/gpu_check.py --out $(GPU_RESULTS)

# The c backend's tests against a copy of the package whose C extension is built with
# AddressSanitizer + UndefinedBehaviorSanitizer; any report aborts the run (so it fails).
SANITIZE_DIR := build/sanitize
SANITIZE_ENV := ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so)" PYTHONPATH=$(SANITIZE_DIR)
sanitize-build: $(STAMP)
	rm -rf $(SANITIZE_DIR) && mkdir -p $(SANITIZE_DIR)
	cp -r src/fastconv $(SANITIZE_DIR)/ && rm -f $(SANITIZE_DIR)/fastconv/_ckernels*
	FASTCONV_SANITIZE=1 $(PY) setup.py -q build_ext --force --build-lib $(SANITIZE_DIR) --build-temp build/sanitize-tmp \
	  >build/sanitize-build.log 2>&1 || { cat build/sanitize-build.log; exit 1; }
	$(SANITIZE_ENV) $(PY) -c "import fastconv._ckernels as m; assert '$(SANITIZE_DIR)' in m.__file__, m.__file__"

# Also the hardening regressions and the bounded fuzz profile on the c backend: the hostile
# sizes they pass must not make C read or write out of bounds.
sanitize: sanitize-build
	$(SANITIZE_ENV) $(PY) -m pytest -q -p no:cacheprovider tests/test_c_backend.py tests/test_c_few_channels.py tests/test_hardening.py \
	  tests/test_algorithms.py tests/test_c_blocked.py
	$(SANITIZE_ENV) $(PY) -m pytest -q -p no:cacheprovider tests/test_conformance.py::test_matches_torch -k "c]"
	$(SANITIZE_ENV) $(PY) -m pytest -q -p no:cacheprovider tests/test_backward.py -k "c]"
	$(SANITIZE_ENV) FASTCONV_FUZZ_BACKENDS=c FASTCONV_FUZZ_TORCH=0 FASTCONV_FUZZ_EXAMPLES=200 \
	  $(PY) -m pytest -q -p no:cacheprovider tests/test_fuzz.py

# Coverage-guided fuzzing (atheris) of the API on the sanitized c backend for FUZZ_C_SECONDS;
# the corpus it grows is kept in build/fuzz-c-corpus for the next run, an input that failed in
# build/fuzz-c-crash-*.
FUZZ_C_SECONDS ?= 60
fuzz-c: sanitize-build
	@if ! $(PY) -c "import atheris" 2>/dev/null && ! $(PY) -m pip install -q --disable-pip-version-check atheris; then \
	  echo "fuzz-c skipped: atheris is not installed and does not install for $$($(PY) -V)"; exit 0; fi; \
	mkdir -p build/fuzz-c-corpus && \
	$(SANITIZE_ENV) $(PY) fuzz/fuzz_c.py -max_total_time=$(FUZZ_C_SECONDS) -print_final_stats=1 \
	  -artifact_prefix=build/fuzz-c- build/fuzz-c-corpus

# The differential fuzzer (tests/test_fuzz.py) at length: FUZZ_EXAMPLES calls per (op, direction),
# drawn afresh, and FUZZ_CUDA_EXAMPLES per forward op on the cuda backend (under Numba's CUDA
# simulator when no device is present).  make test runs the same properties with 40 and 6 fixed ones.
FUZZ_EXAMPLES ?= 2000
FUZZ_CUDA_EXAMPLES ?= 100
fuzz: $(STAMP)
	FASTCONV_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FASTCONV_FUZZ_CUDA_EXAMPLES=$(FUZZ_CUDA_EXAMPLES) HYPOTHESIS_PROFILE=thorough \
	  $(PY) -m pytest -q -p no:cacheprovider --durations=0 tests/test_fuzz.py

# Resources at length: RESOURCE_CALLS calls of every op and direction on every backend (a tenth on
# naive, a quarter on torch) with the resident set flat; Ctrl-C during a long call.  OpenMP threads
# sleep between the many tiny calls (spinning ones starve each other on shared cores).
RESOURCE_CALLS ?= 10000
resources: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE FASTCONV_RESOURCE_CALLS=$(RESOURCE_CALLS) FASTCONV_RESOURCE_WARMUP=20 \
	  $(PY) -m pytest -q -s -p no:cacheprovider --durations=0 tests/test_resources.py

clean:
	rm -rf $(VENV) build src/*.egg-info src/fastconv/_ckernels* .pytest_cache .hypothesis .asv .benchmarks
