# The two commands of the README:
#   make models   set up .venv and produce models/gesture_model_{int8,mixed,balanced}/
#   make test     set up .venv and run every test that needs no board, plus the target
#                 tests against the virtual board
# Both work offline once the packages are installed.
#
# torch: on Linux without an NVIDIA driver (no nvidia-smi) torch==$(TORCH_VERSION) comes from
# TORCH_INDEX, PyTorch's CPU wheel index, when that index answers within 10 s; otherwise (and on
# macOS, whose plain torch is the CPU build, and on Linux with CUDA) from pip's configured index.
# The recipe prints which one it used. Another build: `make setup TORCH_INDEX=<PyTorch index URL>`
# (e.g. a CUDA index); `make setup TORCH_INDEX=` always uses pip's configured index.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH_VERSION := 2.13.0
TORCH_INDEX   ?= https://download.pytorch.org/whl/cpu
BOARD_VENV    := .venv-board
export PYTHONHASHSEED := 0

.PHONY: setup setup-board models test test-board test-qemu bench firmware docs-examples notebooks clean-venv

$(VENV)/.installed: pyproject.toml requirements-lint.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11'" >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@index='$(TORCH_INDEX)'; why=''; \
	if [ -z "$$index" ]; then why='TORCH_INDEX is empty'; \
	elif [ "$$(uname -s)" != Linux ]; then why="$$(uname -s): plain torch is the CPU build"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then why='an NVIDIA driver is present'; \
	elif ! timeout 15 $(PY) -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=10)' "$$index" 2>/dev/null; then \
	  why="TORCH_INDEX=$$index is not reachable"; fi; \
	if [ -z "$$why" ]; then \
	  echo "torch==$(TORCH_VERSION): CPU build from TORCH_INDEX=$$index"; \
	  $(PY) -m pip install --quiet --index-url "$$index" torch==$(TORCH_VERSION); \
	else \
	  echo "torch==$(TORCH_VERSION): from pip's configured index ($$why)"; \
	  $(PY) -m pip install --quiet torch==$(TORCH_VERSION); \
	fi
	@$(PY) -W ignore -c 'import torch; c = torch.version.cuda; print("torch resolved:", torch.__version__, f"(CUDA {c})" if c else "(CPU only)")'
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --only-binary=:all: -r requirements-lint.txt
	touch $@

setup: $(VENV)/.installed

# what flashing and reading a board need (no torch, no esp-ppq): the self-hosted CI job uses it
$(BOARD_VENV)/.installed: requirements-board.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11'" >&2; exit 2; }
	$(PYTHON) -m venv $(BOARD_VENV)
	$(BOARD_VENV)/bin/python -m pip install --quiet -r requirements-board.txt
	$(BOARD_VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $@

setup-board: $(BOARD_VENV)/.installed

models: setup
	$(VENV)/bin/quant build

test: setup
	$(VENV)/bin/pytest --virtual-board

# at a bench with an ESP32-S3 on /dev/ttyUSB0 (override with PORT=...)
PORT ?= /dev/ttyUSB0
test-board: setup-board
	$(BOARD_VENV)/bin/pytest --target esp32s3 --port=$(PORT) tests_target

# the same target tests on the real firmware in Espressif's QEMU (ESP-IDF exported, qemu-system-xtensa on the PATH)
test-qemu: setup-board
	$(BOARD_VENV)/bin/pytest --target esp32s3 --qemu tests_target

firmware: setup
	$(VENV)/bin/quant firmware

bench: setup
	$(PY) bench/bench_build.py

# rewrite the command outputs shown in README.md and docs/*.md (<!-- example: ... --> blocks)
docs-examples: setup
	$(PY) tests_host/doc_examples.py --write

# execute the three notebooks in place and store them with their outputs (quantizes: minutes)
notebooks: setup
	nice $(PY) notebooks/execute.py

clean-venv:
	rm -rf $(VENV) $(BOARD_VENV)
