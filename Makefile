.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(PY):
	python3 -m venv $(VENV)

build-dev: $(PY) ## build the extension into the venv (editable, with test extras)
	$(PY) -m pip install -q -e '.[test]'

test: build-dev ## run the Rust and Python test suites
	cargo test
	$(PY) -m pytest

lint: build-dev ## rustfmt, clippy, ruff and the _core stub check
	cargo fmt --check
	cargo clippy --all-targets --all-features -- -D warnings
	$(VENV)/bin/ruff check
	$(PY) -m mypy.stubtest threadloom._core

wheel: $(PY) ## the release wheel (abi3, manylinux2014 via zig) and the sdist, into dist/
	$(PY) -m pip install -q 'maturin>=1.9.4,<2' 'ziglang==0.13.0.post1' 'auditwheel>=6'
	rm -rf dist
	$(VENV)/bin/maturin build --profile dist --zig --compatibility manylinux2014 --out dist
	$(VENV)/bin/maturin sdist --out dist
	$(VENV)/bin/auditwheel show dist/*.whl

bench: build-dev ## run the benchmarks (each prints its table and ratios)
	$(PY) benches/bench_store.py
	$(PY) benches/bench_prompt.py
	$(PY) benches/bench_engine.py
	$(PY) benches/bench_server.py
	$(PY) benches/bench_concurrency.py
	$(PY) benches/bench_pg_store.py

.PHONY: help build-dev test lint bench wheel
