# imgtrain: `make run` starts the daemon, `make test` runs the test suite.
# Both create the virtualenv (.venv) when it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= config.yaml

.PHONY: run test lint bench clean-venv doctor

# The supported range, as in pyproject.toml's requires-python: tested on 3.11, expected to
# work on 3.12 (Ubuntu 24.04) and 3.13 (Debian 13).
$(BIN)/imgtrain: pyproject.toml
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 11) <= v <= (3, 13) else "imgtrain needs Python 3.11 to 3.13; %s is %d.%d: pick another, e.g. make PYTHON=python3.12" % (sys.executable, *v))'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
	  echo "Could not create a virtualenv: on Debian/Ubuntu run 'sudo apt-get install python3-venv'"; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' || { \
	  echo "If building insightface failed above: sudo apt-get install g++ python3-dev"; exit 1; }
	@touch $@

run: $(BIN)/imgtrain
	$(BIN)/imgtrain run --config $(CONFIG)

test: $(BIN)/imgtrain
	$(BIN)/ruff check daemon tests bench
	$(BIN)/python -m pytest -q -ra tests

lint: $(BIN)/imgtrain
	$(BIN)/ruff check daemon tests bench
	$(BIN)/ruff format --check daemon tests bench

bench: $(BIN)/imgtrain
	$(BIN)/python -m bench

doctor: $(BIN)/imgtrain
	$(BIN)/imgtrain doctor --config $(CONFIG)

clean-venv:
	rm -rf $(VENV)
