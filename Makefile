# The two commands on a fresh machine: `make run` and `make test`.
# Both create .venv from requirements.lock first if it is missing or stale.

PYTHON ?= python3
VENV := .venv
KSERVE_VENV := .venv-kserve
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
WORKDIR ?= work
IMAGE ?= localhost/recsys-pipeline:0.1.0
BASE_IMAGE ?= localhost/py311:base

.PHONY: help run test test-quick test-servers lint format test-image compile image base-image lock clean
.DEFAULT_GOAL := help

help:
	@echo "make run   - set up .venv if needed, run the whole pipeline on the sample data"
	@echo "make test  - set up .venv if needed, run the test suite"
	@echo "make test-quick - lint and the tests that train nothing and run no pipeline (the inner loop)"
	@echo "make test-image - build the image with buildah and run a component in it"
	@echo "make lint  - ruff (lint and format check) and the import layers; part of make test"
	@echo "make format | compile | image | base-image | lock | clean"

# Bytecode is compiled at install (uv does not by default): without .pyc files every
# process compiles what it imports, and `import tensorflow` took 14 s, not 4 s, where
# PYTHONDONTWRITEBYTECODE is set (as on the machines this is tested on).
$(VENV)/.installed: requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "recsys-pipeline needs Python 3.11; set PYTHON=/path/to/python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip sync --compile-bytecode --system-certs --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install --system-certs --python $(BIN)/python --no-deps -e .
	touch $@

run: $(VENV)/.installed  ## the whole pipeline on the embedded sample data
	$(BIN)/recsys run --workdir $(WORKDIR)

# Lint first (seconds), then two workers (the machine's two cores). The trained state
# tests share is built once, by the first worker that needs it (tests/conftest.py,
# built_once); each whole-pipeline group (xdist_group) runs on one worker.
test: lint test-servers $(KSERVE_VENV)/.installed
	$(BIN)/python -m pytest -n 2 --dist loadgroup

# KServe's typed models, for tests/test_kserve.py only: kserve cannot be installed
# beside the TFX libraries (pandas), so it gets an environment of its own.
$(KSERVE_VENV)/.installed: requirements-kserve.lock $(VENV)/.installed
	test -x $(KSERVE_VENV)/bin/python || $(PYTHON) -m venv $(KSERVE_VENV)
	$(BIN)/uv pip sync --system-certs --python $(KSERVE_VENV)/bin/python requirements-kserve.lock
	touch $@

# The inner loop: lint, then every test not marked `trains` (tests/conftest.py marks
# those that train a model or run the pipeline, or need a fixture that does).
test-quick: lint test-servers
	$(BIN)/python -m pytest -n 2 --dist loadgroup -m "not image and not trains"

# Servers the tests start and stop on free loopback ports that pip cannot install:
# Redis (the online feature store), from Debian's package when missing.
test-servers:
	@command -v redis-server >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing Debian's redis-server for the tests"; \
			apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server >/dev/null; \
		else \
			echo "make test needs redis-server: sudo apt-get install redis-server"; exit 1; \
		fi; }

# ruff's rules and format (pyproject.toml), and import-linter's layer contracts.
lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

format: $(VENV)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Builds the image (buildah on a debootstrap base when no Docker engine runs) and
# runs the CLI and one component in it as the non-root user; about 4 minutes.
test-image: $(VENV)/.installed
	$(BIN)/python -m pytest -m image tests/test_image.py

# The checked-in specifications: pipelines/pipeline.yaml and each component's
# component.yaml and README (tests/test_specs.py fails when one is stale).
compile: $(VENV)/.installed
	$(BIN)/recsys compile --specs

# Rebuild the lock after editing requirements.in.
lock: $(VENV)/.installed
	$(BIN)/uv pip compile --system-certs requirements.in -o requirements.lock --python-version 3.11 \
		--python-platform x86_64-unknown-linux-gnu --generate-hashes
	$(BIN)/uv pip compile --system-certs requirements-kserve.in -o requirements-kserve.lock \
		--python-version 3.11 --python-platform x86_64-unknown-linux-gnu --generate-hashes

# One image for every component. Docker when an engine answers, otherwise buildah
# (no daemon needed). Base-image registries may be unreachable: `make base-image`
# builds a Debian bookworm (Python 3.11) base locally with debootstrap.
image:
	@if docker info >/dev/null 2>&1; then \
		docker build --build-arg BASE_IMAGE=$(BASE_IMAGE) -t $(IMAGE) . ; \
	else \
		buildah bud --isolation chroot --build-arg BASE_IMAGE=$(BASE_IMAGE) -t $(IMAGE) . ; \
	fi

base-image:
	bash scripts/build_base_image.sh $(BASE_IMAGE)

clean:
	rm -rf $(WORKDIR) .pytest_cache
