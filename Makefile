# The two commands: `make dev` runs the service, `make test` runs the whole suite.
VENV ?= .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9
PYTHON ?= python3

.PHONY: dev test test-e2e lint fmt openapi venv bench-ingest bench-segments bench-sync bench-soak bench-imports clean

$(VENV)/.synced: pyproject.toml uv.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	@$(VENV)/bin/uv sync --quiet --frozen --inexact --extra dev --python $(PY)
	@touch $@

venv: $(VENV)/.synced

dev: venv
	$(VENV)/bin/stripesync dev

test: venv
	$(PY) -m pytest

# The long end-to-end scenarios and every fault of the Reliability table (tests/e2e, marked
# e2e; `make test` leaves them out and runs the short smoke scenario): ~10 minutes.
test-e2e: venv
	$(PY) -m pytest -m e2e tests/e2e

lint: venv
	$(VENV)/bin/ruff check src tests bench migrations
	$(VENV)/bin/ruff format --check src tests bench migrations
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint Dockerfile

fmt: venv
	$(VENV)/bin/ruff check --fix src tests bench migrations
	$(VENV)/bin/ruff format src tests bench migrations

openapi: venv
	$(PY) -m stripesync.openapi > openapi.yaml

bench-ingest: venv
	$(PY) bench/ingest.py

# 1M contacts, 5M payments in a database of its own (dropped after): bench/results/segments.json
bench-segments: venv
	$(PY) bench/segments.py

# 100k direct-mode contacts synced to the fake platform at 4 req/s: bench/results/sync.json
bench-sync: venv
	$(PY) bench/sync.py

# 100,000 customers + 300,000 charges from a fake Stripe at 100 req/s + 50 ms, 3 runs (~11 minutes):
# bench/results/imports.json and imports.md.
bench-imports: venv
	$(PY) bench/imports.py

# Steady webhook load through the real processes (default 20 minutes; not in CI):
# bench/results/soak.json and soak.md. Shorter: make bench-soak SOAK_ARGS="--minutes 2"
bench-soak: venv
	$(PY) bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
