# imgtrain: `make run` starts the daemon, `make test` runs the test suite.
# Both create the virtualenv (.venv) when it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= config.yaml

.PHONY: run test lint bench clean-venv doctor

$(BIN)/imgtrain: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "imgtrain needs Python 3.11 or newer")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
	  echo "Could not create a virtualenv: on Debian/Ubuntu run 'sudo apt-get install python3-venv'"; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
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
