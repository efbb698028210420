# Two commands on a fresh machine:
#   make demo   -> creates .venv, installs bnnsearch, runs the main job on the embedded defaults
#   make test   -> creates .venv if missing, installs with test extras, runs the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install browser postgres demo test test-fast lint bench clean lock

# Installs use the exact versions in constraints.txt (what the suite last passed with), so every
# machine gets the same install; `make lock` refreshes them deliberately.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

# Re-resolve the newest versions pyproject.toml allows in a scratch venv and freeze them.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	{ sed -n '1,3p' constraints.txt; .venv-lock/bin/python -m pip freeze --exclude-editable | grep -v '^bnnsearch'; } > constraints.new
	mv constraints.new constraints.txt && rm -rf .venv-lock
	@echo "constraints.txt refreshed: run make test before committing it"

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/bnnsearch demo

# The dashboard's browser tests need Chromium (Debian's package); install it where we can. In CI
# (CI=true) a missing browser is an error, never a silent skip.
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
	  { if [ "$$CI" = "true" ]; then echo "chromium could not be installed (CI=true): failing"; exit 1; fi; \
	    echo "chromium could not be installed: the dashboard's browser tests will be skipped"; }

# The cluster tracking-store test runs mlflow server on a real PostgreSQL (Debian's package).
postgres:
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) ; } || \
	  { if [ "$$CI" = "true" ]; then echo "postgresql could not be installed (CI=true): failing"; exit 1; fi; \
	    echo "postgresql could not be installed: the PostgreSQL store test will be skipped"; }

test: install browser postgres
	$(PY) -m pytest $(PYTEST_ARGS)

# The default suite minus tests marked slow.
test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/train_speed.py

lint: install
	$(PY) -m pip install --quiet ruff && $(VENV)/bin/ruff check bnnsearch tests benchmarks dashboards

clean:
	rm -rf $(VENV) runs bnnsearch_runs .pytest_cache
