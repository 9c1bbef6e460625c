# dbconn: one entry point for every habit. `make help` lists the targets.
SHELL := /bin/bash
CARGO ?= cargo
BED_DIR ?= /tmp/dbconn-bed

.PHONY: help setup demo test lint generate bed-up bed-down build clean-bed bench-operator bench-pooler bench chart-check fuzz

help: ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

setup: ## install PostgreSQL, PgBouncer and build kube-apiserver/etcd/helm once (cached in ~/.cache/dbconn)
	scripts/setup.sh

demo: setup ## local bed + CRDs + operator; quickstart connection becomes Ready; psql with its Secret
	scripts/demo.sh

test: setup lint chart-check ## fmt + clippy, chart and Dockerfile checks, release build, unit and integration tests on a fresh local bed
	$(CARGO) build --release --locked --bin dbconn --bin dbconn-pooler
	scripts/with-bed.sh $(CARGO) test --workspace --locked -- --show-output

lint: ## cargo fmt --check and clippy -D warnings
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

chart-check: setup ## helm lint + render + kubeconform (chart, examples), CRD copy, values docs, hadolint (offline)
	scripts/chart-check.sh

generate: ## regenerate crds/ and the chart's copy from src/api/
	$(CARGO) run -q --bin dbconn -- crd --write crds --write charts/dbconn/crds

bench: bench-pooler bench-operator ## both benchmarks

bench-pooler: setup ## dbconn pooler vs PgBouncer vs direct PostgreSQL (pgbench), plain and TLS upstream
	BED_FLAGS=--no-node scripts/with-bed.sh bench/pooler.sh

bench-operator: setup ## 1,000 DatabaseConnections on a fresh bed: time to Ready, reconciles/s, peak RSS, restart
	$(CARGO) bench --locked --bench operator

FUZZ_SECONDS ?= 60
FUZZ_TARGETS := frontend backend startup scram prepared tracker auth_watch
fuzz: ## run each cargo-fuzz target for FUZZ_SECONDS (default 60) on the nightly toolchain; not in CI
	@command -v cargo-fuzz >/dev/null || $(CARGO) install --locked cargo-fuzz
	@mkdir -p $${DBCONN_CACHE:-$$HOME/.cache/dbconn}/fuzz
	@for t in $(FUZZ_TARGETS); do \
	  corpus=$${DBCONN_CACHE:-$$HOME/.cache/dbconn}/fuzz/corpus/$$t; mkdir -p $$corpus; \
	  echo "[fuzz] $$t for $(FUZZ_SECONDS) s (new inputs in $$corpus; seeds in fuzz/corpus/$$t)"; \
	  (cd fuzz && cargo +nightly fuzz run $$t $$corpus corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) -max_len=4096) || exit 1; \
	done

build: ## release build of the dbconn and dbconn-pooler binaries
	$(CARGO) build --release --locked --bin dbconn --bin dbconn-pooler

bed-up: setup ## start the test bed (PostgreSQL, control plane, a node) in the background and print KUBECONFIG=, DATABASE_URL=, …
	@$(CARGO) build -q --release --locked --bin dbconn --bin dbconn-pooler
	@$(CARGO) build -q -p testbed
	@target/debug/testbed --dir $(BED_DIR) up

bed-down: ## stop the test bed (and the demo's operator) and remove its files
	@if [ -f $(BED_DIR)/operator.pid ]; then kill $$(cat $(BED_DIR)/operator.pid) 2>/dev/null || true; fi
	@$(CARGO) build -q -p testbed
	@target/debug/testbed --dir $(BED_DIR) down
