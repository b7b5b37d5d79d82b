# The two commands: `make demo` (the main job on the embedded default, no services) and
# `make test` (installs what it needs, then runs lint, types and every test).
PY := .venv/bin/python

.PHONY: demo test lint typecheck pytest bench-ingest venv deps clean

demo:
	scripts/bootstrap.sh --venv
	$(PY) -m gateway.cli demo

test:
	scripts/bootstrap.sh
	$(MAKE) lint typecheck pytest

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

typecheck:
	.venv/bin/mypy

pytest:
	.venv/bin/pytest

bench-ingest:
	scripts/bootstrap.sh
	$(PY) -m benchmarks.ingest

venv:
	scripts/bootstrap.sh --venv

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
