# edgecc: `make demo` sets up and compiles a real model for arm and riscv;
# `make test` sets up and runs the test suite. Both are idempotent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEB_PACKAGES := g++-aarch64-linux-gnu g++-riscv64-linux-gnu qemu-user
DEB_TOOLS := aarch64-linux-gnu-g++ riscv64-linux-gnu-g++ qemu-aarch64 qemu-riscv64
PYTEST_ARGS ?=

.PHONY: setup deps demo demo-hybrid test clean

setup: deps $(VENV)/.installed

deps:
	@missing=""; for t in $(DEB_TOOLS); do command -v $$t >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing $(DEB_PACKAGES)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(DEB_PACKAGES); \
	fi

$(VENV)/.installed: pyproject.toml
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: setup
	$(PY) -m edgecc.demo

demo-hybrid: setup
	$(PY) -m edgecc.demo hybrid

test: setup
	$(PY) -m pytest $(PYTEST_ARGS) tests
	@mkdir -p build
	$(PY) bench/conformance.py --runners edgecc --floor $$(cat bench/conformance-floor.txt) \
	  --out build/conformance > build/conformance.log 2>&1 || { tail -5 build/conformance.log; exit 1; }
	@tail -4 build/conformance.log

clean:
	rm -rf $(VENV) *.egg-info demo-out .pytest_cache build
