# The two commands of the README:
#   make models   set up .venv and produce models/gesture_model_{int8,mixed,balanced}/
#   make test     set up .venv and run every test that needs no board, plus the target
#                 tests against the virtual board
# Both work offline once the packages are installed.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
export PYTHONHASHSEED := 0

.PHONY: setup models test test-board bench firmware clean-venv

$(VENV)/.installed: pyproject.toml requirements-lint.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11'" >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --only-binary=:all: -r requirements-lint.txt
	touch $@

setup: $(VENV)/.installed

models: setup
	$(VENV)/bin/quant build

test: setup
	$(VENV)/bin/pytest --virtual-board

# at a bench with an ESP32-S3 on /dev/ttyUSB0 (override with PORT=...)
PORT ?= /dev/ttyUSB0
test-board: setup
	$(VENV)/bin/pytest --target esp32s3 --port=$(PORT) tests_target

firmware: setup
	$(VENV)/bin/quant firmware

bench: setup
	$(PY) bench/bench_build.py

clean-venv:
	rm -rf $(VENV)
