# Everything a fresh Debian machine needs, as root: `make serve` or `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
APT_PACKAGES := containerd runc busybox-static criu docker-registry skopeo apache2-utils
STAMP  := $(VENV)/.installed

.PHONY: setup system-deps serve test check lint typecheck proto proto-check bench bench-quick clean

setup: system-deps $(STAMP)

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

# The whole suite: static checks, generated-code freshness, unit and integration tests.
test: setup check
	$(BIN)/python -m pytest

check: lint typecheck proto-check

lint:
	$(BIN)/ruff check .

typecheck:
	$(BIN)/mypy

proto:
	$(BIN)/python -m proto.generate

proto-check:
	$(BIN)/python -m proto.generate --check

# Load benchmarks side by side with ctr and a stateless client (see benchmarks/README.md).
bench: setup
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,bench]'
	$(BIN)/python -m benchmarks

bench-quick: setup
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,bench]'
	$(BIN)/python -m benchmarks --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
