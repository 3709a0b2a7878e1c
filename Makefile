# The few targets people type. Every target makes its own virtualenv first, so a
# fresh clone needs nothing but python3.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= config/operator-server.toml
# The port to listen on: `make run PORT=8000` (default: the config file's, 7786),
# `make demo PORT=8000`, `make cluster PORT=8000` (node-a; node-b on the next one),
# `make screenshots PORT=8000` (default for these three: a free port).
PORT   ?=

.PHONY: run test lint fmt bench demo cluster screenshots clean

# Two stamps: the daemon's own dependencies (run, demo, cluster), then the test and
# lint tools on top (test, lint, fmt, bench, screenshots). Editing setup.cfg or
# pyproject.toml redoes both.
$(BIN)/.installed-run: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e .
	touch $@

$(BIN)/.installed-test: $(BIN)/.installed-run
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,dev]'
	touch $@

run: $(BIN)/.installed-run
	$(BIN)/operator-server serve --config $(CONFIG)$(if $(PORT), --port $(PORT))

# One test process per CPU (PYTEST_XDIST_AUTO_NUM_WORKERS=N to
# choose): most tests wait on sockets and subprocesses, not on the CPU. Each
# process starts its own PostgreSQL and Chromium; a file's tests stay together
# (loadfile), so a module's fixtures are made once.
test: $(BIN)/.installed-test
	$(BIN)/python -m pytest -q -n auto --dist loadfile

lint: $(BIN)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: $(BIN)/.installed-test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(BIN)/.installed-test
	$(BIN)/python -m bench $(ARGS)

demo: $(BIN)/.installed-run
	$(BIN)/python -m operator_server.demo$(if $(PORT), --port $(PORT))

# Two nodes on a throwaway PostgreSQL, in the foreground; Ctrl-C stops and removes all.
cluster: $(BIN)/.installed-run
	$(BIN)/python -m operator_server.localcluster$(if $(PORT), --port $(PORT))

# PNGs of the console (sign-in, inbox, task page) into docs/, for the README; needs chromium.
screenshots: $(BIN)/.installed-test
	$(BIN)/python -m tests.console.screenshots$(if $(PORT), --port $(PORT))

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
