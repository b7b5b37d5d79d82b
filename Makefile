# The two commands: `make demo` (the main job on the embedded default, no services) and
# `make test` (installs what it needs, then runs lint, types and every test).
PY := .venv/bin/python

.PHONY: demo test lint typecheck pytest models bench bench-ingest bench-infer venv clean

demo:
	scripts/bootstrap.sh --venv
	$(PY) -m workers.cli demo

test:
	scripts/bootstrap.sh
	$(MAKE) lint typecheck pytest

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

typecheck:
	.venv/bin/mypy

# Two processes by default (PYTEST_WORKERS=0: one); each file's tests stay in one process.
PYTEST_WORKERS ?= 2
pytest:
	.venv/bin/pytest -n $(PYTEST_WORKERS) --dist loadfile

# Rebuild the reference devices (trained on synthetic phantoms, ~10 min on 2 CPU cores).
# Their ONNX files are committed, so nobody needs this to run the gateway.
models:
	scripts/bootstrap.sh --venv
	$(PY) -m models.zoo.build

bench-ingest:
	scripts/bootstrap.sh
	$(PY) -m benchmarks.ingest

bench-infer:
	scripts/bootstrap.sh --venv
	$(PY) -m benchmarks.inference

# The whole suite (bare onnxruntime sweep, pipeline, ingest, end to end): a few minutes with
# BENCH_ARGS=--quick on 2 CPU cores; results in benchmarks/results/<machine>/.
bench:
	scripts/bootstrap.sh
	$(PY) -m benchmarks.suite $(BENCH_ARGS)

venv:
	scripts/bootstrap.sh --venv

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
