# linewatch — the README names `make demo` and `make test`; both set themselves up.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_SECONDS ?= 30

.PHONY: setup test test-fast demo bench lint gpu-check install-service uninstall-service clean

setup: .setup-stamp

# Idempotent: re-runs only when pyproject.toml changes. torch is pinned to the CPU build this kind of
# machine has on disk; an unpinned request would pull a multi-GB CUDA build.
.setup-stamp: pyproject.toml
	@command -v mosquitto >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y mosquitto; }
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[train,dev]'
	@touch $@

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

demo: setup
	$(VENV)/bin/linewatch demo --seconds $(DEMO_SECONDS)

bench: setup
	$(VENV)/bin/linewatch bench
	$(PY) benchmarks/train_throughput.py

lint: setup
	$(VENV)/bin/ruff check linewatch trainer tests benchmarks
	$(VENV)/bin/mypy linewatch

gpu-check: setup
	scripts/gpu-check

install-service: setup
	$(VENV)/bin/linewatch install-service

uninstall-service: setup
	$(VENV)/bin/linewatch uninstall-service

clean:
	rm -rf $(VENV) .setup-stamp .pytest_cache .mypy_cache .ruff_cache
