# durable-rooms: every set-up step lives here, so a fresh machine needs only `make serve`
# or `make test`. Tools are pinned: uv (bootstrapped from PyPI into .tools/), then uv.lock.

PYTHON ?= python3
UV_VERSION := 0.13.8
UV := .tools/bin/uv
VENV := .venv
export UV_PYTHON_DOWNLOADS := never
export PYTHONPATH := $(CURDIR)/src:$(CURDIR)/local

.PHONY: setup serve dev test check lint types unit bench bench-workerd clean pyodide-setup workerd-setup bench-pyodide browser deploy

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --python $(PYTHON) --group dev
	touch $@

## Our own modules compiled ahead too (PYTHONDONTWRITEBYTECODE stops imports caching them);
## compileall skips what is up to date.
setup: $(VENV)/.synced
	$(VENV)/bin/python -m compileall -q src local

## Run the service locally on its embedded defaults (http://127.0.0.1:8787).
serve: setup
	./rooms serve

## The service in real workerd through `wrangler dev`, offline (docs/cloudflare.md): what
## Cloudflare runs, on http://127.0.0.1:8787.
dev: workerd-setup
	$(VENV)/bin/python -m workerd

## Every check and every test: what .ci/run calls.
test: setup lint types pyodide-setup workerd-setup browser
	ROOMS_PYODIDE_REQUIRED=1 ROOMS_WORKERD_REQUIRED=1 $(VENV)/bin/python -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src local tests bench scripts
	$(VENV)/bin/ruff format --check src/rooms local

types: setup
	$(VENV)/bin/mypy

unit: setup
	$(VENV)/bin/python -m pytest -q tests/core

## The Pyodide tier's tools (tests/pyodide): Node 24 and Pyodide from npm, the Worker's wheels from
## PyPI; pinned, cached under .cache/, a no-op when nothing changed.
pyodide-setup: setup
	$(VENV)/bin/python scripts/setup_pyodide.py --pip .tools/bin/pip

## Real workerd offline (make dev, tests/e2e): pinned wrangler from package-lock.json, the dev
## Pyodide bundle built from the Pyodide tier's npm pyodide, python_modules/ from its wheels.
workerd-setup: pyodide-setup
	$(VENV)/bin/python scripts/setup_workerd.py

## Deploy to Cloudflare (README "Deploy to Cloudflare"; after `wrangler login`): check the bundle
## offline (tests/deploy), then upload src/ and python_modules/, the wheels the Pyodide and workerd
## tiers test, with the pinned wrangler on the pinned Node 24 (wrangler needs Node >= 22.12).
deploy: workerd-setup
	ROOMS_WORKERD_REQUIRED=1 $(VENV)/bin/python -m pytest -q tests/deploy
	PATH="$(CURDIR)/tests/pyodide/harness/node_modules/node/bin:$$PATH" node_modules/.bin/wrangler deploy

## The Worker inside Pyodide: import time of src/worker.py, cost per message in a 100-member room.
bench-pyodide: pyodide-setup
	$(VENV)/bin/python bench/pyodide_bench.py $(BENCH_ARGS)

## Benchmarks (figures, not tests; ~35 min): the runtime vs plain websockets and Node ws baselines,
## then the Worker in real workerd (wrangler dev) vs a JS Durable Object baseline run alongside
## (bench/baselines/workerd-js), then the
## Worker in Pyodide (~1 min; its own block of BENCHMARKS.md), run even if bench/run.py failed.
## BENCH_ARGS go to bench/run.py.
bench: setup workerd-setup
	$(UV) sync --frozen --inexact --python $(PYTHON) --group dev --group bench
	npm ci --prefix bench/baselines/node --no-audit --no-fund
	status=0; $(VENV)/bin/python bench/run.py $(BENCH_ARGS) || status=$$?; \
	$(VENV)/bin/python bench/pyodide_bench.py --write-benchmarks --rounds 20 || status=1; \
	exit $$status

## Only the real-workerd part of `make bench`, ours and the JS baseline (~11 min).
bench-workerd: setup workerd-setup
	$(UV) sync --frozen --inexact --python $(PYTHON) --group dev --group bench
	$(VENV)/bin/python bench/run.py --only workerd $(BENCH_ARGS)

## Debian's chromium for the browser tier (tests/browser/): apt-get, once, only when missing.
browser:
	bash scripts/setup-browser.sh

clean:
	rm -rf .tools $(VENV) .pytest_cache .mypy_cache .ruff_cache
