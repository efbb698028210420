# Two commands on a fresh machine:
#   make demo   -> creates .venv, installs bnnsearch, runs the main job on the embedded defaults
#   make test   -> creates .venv if missing, installs with test extras, runs the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install demo test test-fast lint bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/bnnsearch demo

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# The default suite minus tests marked slow.
test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/train_speed.py

lint: install
	$(PY) -m pip install --quiet ruff && $(VENV)/bin/ruff check bnnsearch tests benchmarks

clean:
	rm -rf $(VENV) runs bnnsearch_runs .pytest_cache
