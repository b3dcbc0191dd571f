# durable-rooms: every set-up step lives here, so a fresh machine needs only `make serve`
# or `make test`. Tools are pinned: uv (bootstrapped from PyPI into .tools/), then uv.lock.

PYTHON ?= python3
UV_VERSION := 0.13.8
UV := .tools/bin/uv
VENV := .venv
export UV_PYTHON_DOWNLOADS := never
export PYTHONPATH := $(CURDIR)/src:$(CURDIR)/local

.PHONY: setup serve test check lint types unit bench clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --python $(PYTHON) --group dev
	touch $@

setup: $(VENV)/.synced

## Run the service locally on its embedded defaults (http://127.0.0.1:8787).
serve: setup
	./rooms serve

## Every check and every test: what .ci/run calls.
test: setup lint types
	$(VENV)/bin/python -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src local tests
	$(VENV)/bin/ruff format --check src/rooms local

types: setup
	$(VENV)/bin/mypy

unit: setup
	$(VENV)/bin/python -m pytest -q tests/core

clean:
	rm -rf .tools $(VENV) .pytest_cache .mypy_cache .ruff_cache
