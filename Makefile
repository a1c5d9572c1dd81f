# herald: two set-up commands, `make demo` and `make test`; both create .venv and install first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test bench lint clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "herald needs Python 3.11 or newer; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/herald demo

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python bench/fanout.py

lint: install
	$(BIN)/ruff check worker channels tests bench
	$(BIN)/ruff format --check worker channels tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .herald .pytest_cache .mypy_cache .ruff_cache bench/out *.egg-info
