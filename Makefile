# Two commands do all set-up: `make demo` and `make test`. Both create .venv and install the package.
# `make test` is the whole suite (CI runs it); `make test-fast` leaves out the tests that start Ray, a Ray
# cluster or a study (marked `e2e` by tests/conftest.py). Both keep bytecode (and pytest's rewritten test modules)
# cached even where PYTHONDONTWRITEBYTECODE is set: otherwise every worker and every process a test starts
# compiles them again, and collecting the suite takes half as long again. (How many threads the tests compute
# with, and how they wait, tests/conftest.py sets: it is read before torch is.)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast install clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@name=beta_sweep-smoke-$$(date +%Y%m%d-%H%M%S); \
	$(BIN)/python -m catkd.study studies/beta_sweep.yaml --smoke --storage results/demo --name $$name && \
	$(BIN)/python analysis/report.py results/demo/$$name

test: $(STAMP)
	RAY_USAGE_STATS_ENABLED=0 PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q -n 2 --maxschedchunk 1 --durations=15 tests

test-fast: $(STAMP)
	RAY_USAGE_STATS_ENABLED=0 PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q -n 2 --durations=15 -m "not e2e" tests

clean-venv:
	rm -rf $(VENV)
