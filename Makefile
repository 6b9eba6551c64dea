# edgecc: `make demo` sets up and compiles a real model for arm and riscv;
# `make test` sets up and runs the test suite. Both are idempotent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEB_PACKAGES := g++-aarch64-linux-gnu g++-riscv64-linux-gnu qemu-user
DEB_TOOLS := aarch64-linux-gnu-g++ riscv64-linux-gnu-g++ qemu-aarch64 qemu-riscv64
PYTEST_ARGS ?= --durations=15

.PHONY: setup deps demo demo-hybrid test clean

setup: deps $(VENV)/.installed

deps:
	@missing=""; for t in $(DEB_TOOLS); do command -v $$t >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing $(DEB_PACKAGES)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(DEB_PACKAGES); \
	fi
	@# Debian 12's qemu 7.2 aborts on RVV float->int conversions (decode_save_opc); its backports have qemu 10.
	@major=$$(qemu-riscv64 --version | sed -n 's/.*version \([0-9]*\)\..*/\1/p'); \
	if [ "$${major:-0}" -lt 8 ] && grep -q '^VERSION_CODENAME=bookworm' /etc/os-release; then \
	  echo "installing qemu-user from bookworm-backports (qemu $$major cannot run RISC-V int8 code)"; \
	  echo "deb http://deb.debian.org/debian bookworm-backports main" | \
	    $(SUDO) tee /etc/apt/sources.list.d/edgecc-bookworm-backports.list >/dev/null && \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    -t bookworm-backports qemu-user; \
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
