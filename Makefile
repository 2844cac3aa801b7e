# mailpanel: `make run` and `make test` on a fresh Debian machine with Python 3.11.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: install install-test run test lint typecheck pytest bench clean mailstack-deps

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "python3 -m venv failed; installing python3-venv"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv; \
	  else sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv; fi; \
	  rm -rf $(VENV); $(PYTHON) -m venv $(VENV); }
	@$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	@touch $@

$(TEST_STAMP): pyproject.toml $(STAMP)
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

install: $(STAMP)

install-test: $(TEST_STAMP)

run: install
	$(BIN)/mailpanel serve

lint: install-test
	$(BIN)/ruff check core commands projections api workers tests bench

typecheck: install-test
	$(BIN)/mypy core commands projections api workers

# The end-to-end mail tests need Postfix, Dovecot and OpenDKIM: installed here when we are
# root (as in CI); without them those tests skip and say why.
mailstack-deps:
	@if [ "$$(id -u)" = 0 ]; then bash .ci/mailstack-deps; \
	else echo "not root: skipping the mail-stack install (e2e mail tests will skip)"; fi
	@if [ "$$(id -u)" = 0 ]; then bash .ci/ui-deps; else echo "not root: skipping the Chromium install (browser UI tests will skip)"; fi

pytest: install-test mailstack-deps
	$(BIN)/pytest

test: lint typecheck pytest

bench: install-test
	$(BIN)/python -m bench
	$(BIN)/python -m bench.policy_bench
	$(BIN)/python -m bench.export_bench --rounds 1

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
