# Switchyard: the front door for developers and CI. `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION := 0.13.8
# uv runs as a Python module so it is found wherever pip put it.
UV ?= python3 -m uv
PYTEST := $(UV) run --no-sync pytest

# Real infrastructure, for the targets that use it (tests, benchmarks, topics, migrations);
# export either variable to point elsewhere. `make run` never sees these defaults, and
# embedded mode ignores DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS even when exported.
INFRA_TARGETS := test test-integration test-e2e bench bench-gateway bench-peers topics migrate
$(INFRA_TARGETS): export KAFKA_BOOTSTRAP_SERVERS ?= 127.0.0.1:9092
$(INFRA_TARGETS): export DATABASE_URL ?= postgresql+psycopg://switchyard:switchyard@127.0.0.1:5432/switchyard

UNIT_TESTS := libs/common/tests/unit $(wildcard services/*/tests/unit tools/*/tests/unit)
INTEGRATION_TESTS := $(wildcard libs/common/tests/integration services/*/tests/integration)

.PHONY: help
help: ## List every target
	@if [ -t 1 ]; then on='\033[36m'; off='\033[0m'; else on=''; off=''; fi; \
		grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk -v on="$$on" -v off="$$off" 'BEGIN {FS = ":.*## "}; {printf "  %s%-18s%s %s\n", on, $$1, off, $$2}'

.PHONY: install
install: ## Install uv (if missing) and every package of the workspace into .venv (bytecode compiled)
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet "uv==$(UV_VERSION)"
	@$(UV) sync --all-packages --quiet --compile-bytecode
	@# The workspace's own packages are installed editable, which uv does not compile; where
	@# PYTHONDONTWRITEBYTECODE is set, Python would compile them at every start.
	@$(UV) run --no-sync python -m compileall -q libs/*/src services/*/src >/dev/null

.PHONY: run
run: install ## Run Switchyard embedded: all services in one process, in-memory bus, SQLite (never Kafka or Postgres)
	@$(UV) run --no-sync switchyard dev

.PHONY: infra-up
infra-up: ## Install (first time) and start a real Kafka broker and PostgreSQL server
	deploy/local/infra.sh up

.PHONY: infra-down
infra-down: ## Stop the local Kafka broker and PostgreSQL server
	deploy/local/infra.sh down

.PHONY: infra-status
infra-status: ## Exit 0 if both Kafka and PostgreSQL answer
	deploy/local/infra.sh status

.PHONY: topics
topics: install ## Create every topic on $KAFKA_BOOTSTRAP_SERVERS (default: the local broker) with explicit partition counts
	$(UV) run --no-sync switchyard topics create

.PHONY: migrate
migrate: install ## Apply every service's database migrations to $DATABASE_URL (default: the local PostgreSQL)
	$(UV) run --no-sync switchyard db upgrade

.PHONY: test
test: install infra-up ## Run every check: lint, deploy manifests, unit, integration (real Kafka and Postgres), e2e, browser, faults
	$(MAKE) --no-print-directory lint deploy-check test-unit test-integration test-e2e test-browser test-faults

.PHONY: test-unit
test-unit: install ## Unit tests of every package (fakes, no network), one worker per CPU
	env -u DATABASE_URL -u KAFKA_BOOTSTRAP_SERVERS $(PYTEST) -q -n auto $(UNIT_TESTS)

.PHONY: test-integration
test-integration: install ## Integration tests against the real Kafka broker and PostgreSQL server
	SWITCHYARD_REQUIRE_INFRA=1 $(PYTEST) -q -m integration $(INTEGRATION_TESTS)

.PHONY: test-e2e
test-e2e: install ## Whole-system tests: every service as its own process on Kafka and Postgres; make run as a new user runs it
	deploy/local/promtool.sh >/dev/null
	SWITCHYARD_REQUIRE_INFRA=1 $(PYTEST) -q -m e2e tests/e2e

.PHONY: test-faults
test-faults: install ## Faults under load (broker restart, killed history, expiry race, SIGTERM) on a broker of its own
	SWITCHYARD_REQUIRE_INFRA=1 $(PYTEST) -q -m faults tests/faults

.PHONY: test-browser
test-browser: install ## The web console in Chromium (Debian's, installed if missing) via Playwright; screenshots in build/
	deploy/local/chromium.sh >/dev/null
	SWITCHYARD_REQUIRE_BROWSER=1 $(PYTEST) -q -m browser tests/browser services/gateway/tests/browser

.PHONY: console-assets
console-assets: ## Refresh the console's vendored htmx, Chart.js and Pico CSS from the npm registry
	services/gateway/scripts/vendor-console-assets.sh

.PHONY: bench
bench: install infra-up ## Every benchmark: gateway throughput and latency (needs Go), cache hits, auth, history, budgets and rate limits, long streams
	$(UV) run --no-sync python tests/bench/run.py
	$(UV) run --no-sync python tests/bench/bench_cache.py
	$(UV) run --no-sync python tests/bench/bench_auth.py
	$(UV) run --no-sync python tests/bench/bench_history.py
	$(UV) run --no-sync python tests/bench/bench_governance.py
	$(UV) run --no-sync python tests/bench/bench_stream_accumulators.py
	$(UV) run --no-sync python tests/bench/bench_long_streams.py

.PHONY: bench-gateway
bench-gateway: install infra-up ## Throughput and latency: simulator direct vs embedded vs Kafka mode
	$(UV) run --no-sync python tests/bench/run.py

.PHONY: bench-peers
bench-peers: install infra-up ## Side by side with LiteLLM (wrk, nginx upstream; direct, LiteLLM, embedded, Kafka) and the burst-stall check: one table
	tests/bench/peers/setup.sh
	$(UV) run --no-sync python tests/bench/peers/run.py

.PHONY: bench-streams
bench-streams: install ## Long streams only: embedded mode, 50,000 and 200,000 chunks per protocol; event-loop stalls, CPU, GC, memory
	$(UV) run --no-sync python tests/bench/bench_stream_accumulators.py
	$(UV) run --no-sync python tests/bench/bench_long_streams.py

.PHONY: bench-burst
bench-burst: install ## Burst-stall check only: embedded mode, 10 s at c=64, then p99 of 100 requests at c=1 vs steady, /livez throughout
	tests/bench/peers/setup.sh
	$(UV) run --no-sync python tests/bench/peers/run.py --modes burst

.PHONY: lint
lint: install ## Static checks: ruff, then mypy (strict for every package)
	$(UV) run --no-sync ruff check libs services tools tests
	$(UV) run --no-sync mypy

.PHONY: deploy-check
deploy-check: ## Validate docker-compose, Dockerfiles and every Kubernetes overlay offline
	deploy/check.sh

.PHONY: schema
schema: install ## Regenerate the published event contract (docs/events/: JSON Schema and AsyncAPI)
	$(UV) run --no-sync switchyard events schema --output docs/events/v2.schema.json
	$(UV) run --no-sync switchyard events asyncapi --output docs/events/asyncapi.json

.PHONY: clean
clean: ## Remove embedded-mode state and caches (keeps the Kafka jar cache); refused while `make run` runs here
	@# A running `switchyard dev` holds an exclusive flock on .switchyard/dev.lock: its
	@# databases and keys must not vanish under it.
	@# flock(1) where util-linux has it, else Python's fcntl (macOS has no flock(1)): its
	@# exit status 1 is the lock held (0 free; no Python at all, 127, lets clean go on).
	@if [ -e .switchyard/dev.lock ] && { if command -v flock >/dev/null; then ! flock -n .switchyard/dev.lock true; \
		else python3 -c 'import fcntl, sys; fcntl.flock(open(sys.argv[1]), fcntl.LOCK_EX | fcntl.LOCK_NB)' .switchyard/dev.lock 2>/dev/null; [ $$? -eq 1 ]; fi; }; then \
		echo "make clean: a switchyard dev (make run) is running in this directory; stop it first, its state is in .switchyard/" >&2; \
		exit 1; \
	fi
	rm -rf .switchyard .pytest_cache .ruff_cache build
