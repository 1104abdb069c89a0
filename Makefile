# servegate: `make up` runs the gateway with an example model; `make test` runs every test.
# Both install into .venv first (torch is pinned to its CPU build by the [torch] extra).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STATE ?= .servegate

.PHONY: install up test test-tools lint bench bench-tools clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,bench]"
	touch $@

up: install
	$(BIN)/servegate model example $(STATE)/models
	$(BIN)/servegate up -f examples/mlp.yaml --state-dir $(STATE)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint test-tools
	$(BIN)/python -m pytest

# The metric-source tests run a real Prometheus (the Debian package; the tests start it themselves
# on a free loopback port). Recommends are skipped: they would pull in and start a node exporter.
# The registry tests run a real PostgreSQL the same way (initdb in a temporary folder): the
# createcluster.d file stops the package from creating, and starting, its own "main" cluster.
# The dashboard's browser tests drive Debian's Chromium through Playwright (which downloads nothing).
SUDO = $(shell [ "$$(id -u)" != 0 ] && command -v sudo)
test-tools:
	@command -v chromium >/dev/null || \
		($(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core)
	@command -v prometheus >/dev/null || \
		($(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		($(SUDO) mkdir -p /etc/postgresql-common/createcluster.d && \
		echo "create_main_cluster = false" | $(SUDO) tee /etc/postgresql-common/createcluster.d/servegate.conf >/dev/null && \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql)

# The benchmark loads servers with wrk and h2load (Debian packages); the peers it compares with
# (KServe, Ray Serve) come from ../shared/bench and install themselves on first use.
bench-tools:
	@command -v wrk >/dev/null && command -v h2load >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq wrk nghttp2-client)

bench: install bench-tools
	$(BIN)/python loadtests/bench_replica.py
	$(BIN)/python loadtests/bench_gateway.py
	$(BIN)/python loadtests/bench_dashboard.py
	$(BIN)/python loadtests/bench_rollout.py
	$(BIN)/python loadtests/bench_autoscale.py
	$(BIN)/python loadtests/bench_registry.py
	$(BIN)/python loadtests/bench_pipeline.py
	$(BIN)/python loadtests/bench_ray.py

clean:
	rm -rf $(VENV) $(STATE) .pytest_cache .ruff_cache
