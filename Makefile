# The two commands the README opens with: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test lint services bench perf clean

# Debian splits venv out of python3: install it when the first try fails.
$(BIN)/nanogate: pyproject.toml
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); scripts/apt-install.sh python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	@touch $@

$(VENV)/.test-deps: $(BIN)/nanogate
	$(BIN)/pip install --quiet -e '.[test]'
# The console tests drive Debian's Chromium through Playwright (never a downloaded browser
# build): install the package when it is missing.
	@[ -x /usr/bin/chromium ] || scripts/apt-install.sh chromium
# The cluster tests put Debian's nginx in front of three gateway nodes.
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || scripts/apt-install.sh nginx
	@touch $@

# PostgreSQL (127.0.0.1:5432, database `test`) and Redis, installed and started when missing;
# checked on every run, as they may have stopped since the last one.
services:
	@scripts/services.sh

serve: $(BIN)/nanogate
	$(BIN)/nanogate serve

lint: $(VENV)/.test-deps
	$(BIN)/ruff check nanogate tests bench
	$(BIN)/ruff format --check nanogate tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint services
	$(BIN)/pytest -q

bench: $(VENV)/.test-deps
	$(BIN)/python bench/relay.py

# nanogate next to a bare forwarder, nginx and its peers (docs/performance.md); granian and
# matplotlib come from the bench extra, the peers install themselves under bench/.cache.
perf: $(VENV)/.test-deps
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/perf.py

clean:
	rm -rf $(VENV) nanogate-data .mypy_cache .ruff_cache .pytest_cache
