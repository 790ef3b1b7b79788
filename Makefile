# help-exchange — two commands matter: `make demo` and `make test`. Each sets up what it needs.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
NODE_DIR := tests/contract/asyncapi
NODE_STAMP := $(NODE_DIR)/node_modules/.installed-stamp
# The second producer, in Node.js, written from the contract documents (tests/interop).
INTEROP_NODE_DIR := tests/interop/node
INTEROP_NODE_STAMP := $(INTEROP_NODE_DIR)/node_modules/.installed-stamp
# axe-core, the accessibility checker the browser test runs in every page (tests/casebook).
AXE_DIR := tests/casebook/axe
AXE_STAMP := $(AXE_DIR)/node_modules/.installed-stamp
# A real OpenID Provider (the certified oidc-provider) for the sign-in tests.
OIDC_DIR := tests/oidc/provider
OIDC_STAMP := $(OIDC_DIR)/node_modules/.installed-stamp

.PHONY: demo test check soak lint bench venv clean help system-packages

help:
	@echo "make demo   run the main job end to end on the embedded broker + SQLite"
	@echo "make test   every test: lint, typing, contract, unit, integration (real broker)"
	@echo "make check  the developer's fast loop: lint, typing and the tests that need no broker nor database"
	@echo "make soak   the long runs (kill -9 soaks, fault injection at volume); CI runs them too"
	@echo "make bench  the benchmarks in bench/: prints their figures, writes bench/report.md and .json"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

venv: $(STAMP)

# The benchmarks' own venv, with the peers we measure against (Quix Streams, bench/quix_peer.py):
# their pins (pydantic<2.14, confluent-kafka<2.13) are older than ours, so not in .venv.
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed-stamp

$(BENCH_STAMP): pyproject.toml
	@test -x $(BENCH_VENV)/bin/python || $(PY) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q -e '.[bench]'
	@touch $@

$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	npm ci --prefix $(NODE_DIR) --no-audit --no-fund --loglevel=error
	@touch $@

$(INTEROP_NODE_STAMP): $(INTEROP_NODE_DIR)/package.json $(INTEROP_NODE_DIR)/package-lock.json
	npm ci --prefix $(INTEROP_NODE_DIR) --no-audit --no-fund --loglevel=error
	@touch $@

$(AXE_STAMP): $(AXE_DIR)/package.json $(AXE_DIR)/package-lock.json
	npm ci --prefix $(AXE_DIR) --no-audit --no-fund --loglevel=error
	@touch $@

$(OIDC_STAMP): $(OIDC_DIR)/package.json $(OIDC_DIR)/package-lock.json
	npm ci --prefix $(OIDC_DIR) --no-audit --no-fund --loglevel=error
	@touch $@

# Real parts for the tests, from Debian's packages (CI starts on a fresh machine).
# PostgreSQL for the SQL repository tests; Chromium for the browser test of the web view;
# Go and golang.org/x/mod (sumdb/note, sumdb/tlog) for the ledger's independent verifier.
system-packages:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	test -x /usr/bin/go || missing="$$missing golang-go"; \
	test -d /usr/share/gocode/src/golang.org/x/mod/sumdb/tlog || missing="$$missing golang-golang-x-mod-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "installing from Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: $(STAMP)
	$(BIN)/help-exchange demo

lint: $(STAMP)
	$(BIN)/ruff check services tests bench
	$(BIN)/mypy

test: $(STAMP) $(NODE_STAMP) $(INTEROP_NODE_STAMP) $(AXE_STAMP) $(OIDC_STAMP) system-packages lint
	$(BIN)/pytest -q

# The fast loop: what needs no broker, database, worker or outside program but the AsyncAPI
# parser (tests/conftest.py marks the rest `integration`). `make test` still runs everything.
check: $(STAMP) $(NODE_STAMP) lint
	$(BIN)/pytest -q -m "not integration"

# Long runs, kept out of `make test` to keep it short; CI runs both.
soak: $(STAMP) system-packages
	$(BIN)/pytest -q tests/soak

bench: $(STAMP) $(BENCH_STAMP)
	BENCH_QUIX_PYTHON=$(abspath $(BENCH_VENV))/bin/python $(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(BENCH_VENV) var $(NODE_DIR)/node_modules $(INTEROP_NODE_DIR)/node_modules $(AXE_DIR)/node_modules $(OIDC_DIR)/node_modules
