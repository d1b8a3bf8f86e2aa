# Everything a fresh Debian machine needs, as root: `make serve` or `make test`.
# `make unit` and `make check` need neither root, containerd nor apt: only python3 -m venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
APT_PACKAGES := containerd runc busybox-static criu docker-registry skopeo apache2-utils
STAMP  := $(VENV)/.installed
# Only the benchmarks' peers (docker run --rm, podman run --rm): never needed by the tests.
BENCH_APT_PACKAGES := docker.io podman

.PHONY: setup venv system-deps bench-deps serve test unit check lint format-check typecheck imports proto proto-check bench bench-quick clean

setup: system-deps venv

venv: $(STAMP)

# Install the host packages only when something is missing (apt-get update once).
system-deps:
	@missing=""; \
	for tool in containerd runc busybox criu ctr docker-registry skopeo htpasswd; do command -v $$tool >/dev/null 2>&1 || missing=yes; done; \
	[ -x /bin/busybox ] || missing=yes; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing=yes; \
	if [ -n "$$missing" ]; then \
		echo ">> installing $(APT_PACKAGES) python3-venv"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			$(APT_PACKAGES) python3-venv >/dev/null; \
	fi

$(STAMP): pyproject.toml constraints.txt
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

# The main job: the control plane on an embedded private containerd when none is running.
serve: setup
	$(BIN)/containerd-actors serve

# The whole suite: static checks, generated-code freshness, unit, integration and fault tests.
test: setup check
	$(BIN)/python -m pytest

# The fast loop: tests/unit only (the in-memory fake; no daemon, no root).
unit: venv
	$(BIN)/python -m pytest -q tests/unit

# Static checks: lint, format, types, layering (import contracts), generated-code freshness.
check: lint format-check typecheck imports proto-check

lint: venv
	$(BIN)/ruff check .

format-check: venv
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

imports: venv
	$(BIN)/lint-imports

proto: venv
	$(BIN)/python proto/generate.py

proto-check: venv
	$(BIN)/python proto/generate.py --check

# The peers the benchmarks compare with; each is skipped with the reason if it cannot run.
bench-deps:
	@missing=""; \
	for tool in /usr/bin/docker /usr/sbin/dockerd /usr/bin/podman; do [ -x $$tool ] || missing=yes; done; \
	if [ -n "$$missing" ]; then \
		echo ">> installing $(BENCH_APT_PACKAGES)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			$(BENCH_APT_PACKAGES) >/dev/null; \
	fi

# Load benchmarks side by side with ctr, a stateless client, docker and podman, and the
# 1,000-container density run (see benchmarks/README.md).
bench: setup bench-deps
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,bench]'
	$(BIN)/python -m benchmarks

bench-quick: setup bench-deps
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,bench]'
	$(BIN)/python -m benchmarks --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
