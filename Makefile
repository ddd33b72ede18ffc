# Each target creates or refreshes .venv first (again whenever pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test demo bench lint requirements clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[cpu,dev]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

# make demo SERVE=1: then keep serving the demo's run in the explorer (/ui)
demo: $(STAMP)
	$(BIN)/chexcurate demo $(if $(SERVE),--serve)

bench: $(STAMP)
	$(BIN)/python -m bench.engine

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

# the pinned locks the Docker images install: cpu.txt from this venv (offline), gpu.txt resolved on PyPI
requirements: $(STAMP)
	$(BIN)/python requirements/lock.py

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
