# The two commands: `make run` and `make test`. Both work on a fresh clone:
# they create .venv and install everything (Debian packages included).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is served from local disk on our machines; override elsewhere,
# e.g. `make test TORCH_SPEC="torch torchvision"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
PIP := $(PY) -m pip install --quiet --progress-bar off
# This machine's pip config names local index folders that may be absent; drop that noise.
QUIET_PIP := { grep -v "is ignored: it is neither" || true; }

.PHONY: run test install system-deps clean

$(STAMP): pyproject.toml constraints.txt Makefile
	$(MAKE) system-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip 2>&1 | $(QUIET_PIP)
	$(PIP) $(TORCH_SPEC) 2>&1 | $(QUIET_PIP)
	$(PIP) -c constraints.txt -e '.[dev]' 2>&1 | $(QUIET_PIP)
	touch $(STAMP)

install: $(STAMP)

# Debian packages the tests and the demo need; skipped when already present
# or when not root (then install them yourself).
system-deps:
	@bash .ci/system-deps.sh

# The pipeline as Prefect runs it: `dspo up` starts the local stack in .dspo/stack (or reuses
# it), `dspo pipeline` runs the dspo/full-pipeline deployment on it and watches the run (each
# stage its own flow run; a second `make run` finds every stage's output in the store: a cache
# hit per stage) and prints where to look. `dspo down` stops the stack.
run: $(STAMP)
	$(VENV)/bin/dspo up
	$(VENV)/bin/dspo pipeline --profile demo
	$(VENV)/bin/dspo datasets ls

# Test files are spread over TEST_WORKERS processes (a file's tests stay in one process, so its
# module fixtures are built once); the slowest tests are listed at the end.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --durations=25 tests

clean:
	rm -rf $(VENV) .dspo
