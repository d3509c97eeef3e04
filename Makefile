# `make run` installs the app into .venv and serves it; `make test` installs, lints and runs every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8501

.PHONY: run test lint install install-dev browser bench gpu-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev: requirements-dev.txt $(VENV)/.runtime
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

run: install
	$(BIN)/python -m streamlit run app.py --server.port $(PORT)

browser:
	@bash scripts/ensure-chromium.sh

# The floors of core/ (import-linter's contracts in pyproject.toml) and ruff's checks, before any test.
lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: install-dev browser lint
	$(BIN)/python -m pytest

bench: install-dev
	$(BIN)/python bench/run_all.py

gpu-check: install-dev
	bash scripts/gpu-check.sh

clean:
	rm -rf $(VENV) .pytest_cache
