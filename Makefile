# The project's front door. `make demo` runs the main job; `make test` runs every test with lint and type checks.
# Both create the project's own virtual environment (.venv) with python3 and install into it first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.docs-installed

.PHONY: demo test lint typecheck pytest conformance bench docs clean

# The version is installed metadata (importlib.metadata), so a new version reinstalls too.
$(STAMP): pyproject.toml pbuffer/_version.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pbuffer demo

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest

# The conformance suite on Python 3.10 and 3.13 (CI runs it after `make test`).
conformance: $(STAMP)
	$(BIN)/nox --sessions conformance-3.10 conformance-3.13

bench: $(STAMP)
	$(BIN)/python -m benchmarks

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,docs]'
	touch $(DOCS_STAMP)

# The documentation site (mkdocs.yml, docs/) into site/; --strict: a broken link or API reference fails it.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) .nox .pytest_cache .mypy_cache .ruff_cache build dist site *.egg-info
