# Depot: `make serve` runs the server on the bundled models, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test test-fast install install-test bench attacks screenshot clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	touch $@

$(VENV)/.installed-test: requirements-test.txt requirements-frameworks.txt $(VENV)/.installed
	$(BIN)/pip install -q -r requirements-test.txt
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

serve: install
	$(BIN)/gunicorn -c gunicorn.conf.py

test: install-test
	$(BIN)/python -m pytest -q tests

# The in-process tests only: no gunicorn, no PostgreSQL, no browser (tests/conftest.py)
test-fast: install-test
	$(BIN)/python -m pytest -q -m "not server and not postgres and not browser" tests

clean:
	rm -rf $(VENV) .pytest_cache

# Depot as it was one commit before runs beside it: the change's cost, if any
BASELINE ?= HEAD~1
bench: install-test
	$(BIN)/python bench/bench.py --baseline $(BASELINE)
	$(BIN)/python bench/memory.py

# Hostile clients against a real server, measured (docs/internals.md)
attacks: install-test
	$(BIN)/python bench/attacks.py

# The console's picture in the README: a plain deployment, taken by its browser test
screenshot: install-test
	DEPOT_SCREENSHOT=$(CURDIR)/docs/console.png $(BIN)/python -m pytest -q tests/test_console.py -k plain_deployment
