# Two commands on a fresh machine:
#   make demo   runs `bgwatch demo` against the embedded simulator (no API key, no internet)
#   make test   lint + types + the whole test suite, on openai 3.x (httpx2) and openai 2.x (httpx)
# Both create their virtualenvs on first use.

PYTHON ?= python3
VENV ?= .venv
VENV2 ?= .venv-openai2
OPENAI2 ?= openai==2.54.0
BIN := $(VENV)/bin
BIN2 := $(VENV2)/bin
VENVF ?= .venv-frameworks
BINF := $(VENVF)/bin
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck pytest pytest-openai2 pytest-frameworks prometheus grafana-schema bench dashboards clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

$(BIN2)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV2)
	$(BIN2)/python -m pip install -q --upgrade pip
	$(BIN2)/python -m pip install -q -e '.[dev]' '$(OPENAI2)'
	$(BIN2)/python -m pip uninstall -q -y httpx2
	touch $@

# LangChain, the OpenAI Agents SDK and LiteLLM pin their own openai: a venv of their own.
$(BINF)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENVF)
	$(BINF)/python -m pip install -q --upgrade pip
	$(BINF)/python -m pip install -q -e '.[frameworks]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/bgwatch demo

# Debian's prometheus + promtool for the rule tests and the end-to-end test.
prometheus:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; \
	  else echo "install Debian's 'prometheus' package (prometheus + promtool) for the rule and e2e tests"; fi; }

# @grafana/schema + typescript (pinned by the lock file) for tests/test_grafana_schema.py
# (.ci/run installs Debian's nodejs + npm; without npm the test skips, or fails under $CI).
grafana-schema:
	@if command -v npm >/dev/null; then $(MAKE) --no-print-directory tests/grafana-schema/node_modules/.installed; \
	else echo "install node + npm (Debian: nodejs npm) for the Grafana schema test"; fi

tests/grafana-schema/node_modules/.installed: tests/grafana-schema/package-lock.json
	cd tests/grafana-schema && npm ci --no-audit --no-fund --loglevel=error
	touch $@

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check src tests scripts benchmarks examples

typecheck: $(BIN)/.installed
	$(BIN)/mypy

pytest: $(BIN)/.installed prometheus grafana-schema
	$(BIN)/pytest -m "not frameworks" $(PYTEST_ARGS)

pytest-openai2: $(BIN2)/.installed
	$(BIN2)/pytest -m "not prometheus and not frameworks" $(PYTEST_ARGS)

pytest-frameworks: $(BINF)/.installed
	$(BINF)/pytest -m frameworks tests/test_frameworks.py $(PYTEST_ARGS)

test: lint typecheck pytest pytest-openai2 pytest-frameworks

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/run.py

dashboards: $(BIN)/.installed
	$(BIN)/python scripts/generate_dashboards.py

clean:
	rm -rf $(VENV) $(VENV2) $(VENVF) .pytest_cache .mypy_cache .ruff_cache
