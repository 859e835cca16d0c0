# The two commands the README opens with: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test lint bench clean

$(BIN)/nanogate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	@touch $@

$(VENV)/.test-deps: $(BIN)/nanogate
	$(BIN)/pip install --quiet -e '.[test]'
# The console tests drive Debian's Chromium through Playwright (never a downloaded browser
# build): install the package when it is missing, refreshing the package lists only if the
# first try fails, with sudo only when not already root.
	@if [ ! -x /usr/bin/chromium ]; then \
		SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		$$SUDO apt-get install -y --no-install-recommends chromium \
		|| { $$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends chromium; }; \
	fi
	@touch $@

serve: $(BIN)/nanogate
	$(BIN)/nanogate serve

lint: $(VENV)/.test-deps
	$(BIN)/ruff check nanogate tests bench
	$(BIN)/ruff format --check nanogate tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

bench: $(VENV)/.test-deps
	$(BIN)/python bench/relay.py

clean:
	rm -rf $(VENV) nanogate-data .mypy_cache .ruff_cache .pytest_cache
