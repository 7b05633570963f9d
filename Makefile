# make setup : create .venv with the project and its dev tools (CPU torch without an NVIDIA GPU)
# make demo  : the main job; with no dataset configured it runs the built-in phantom demo
# make test  : the test suite (offline, CPU)
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION := 2.13.0
HAS_NVIDIA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
ifeq ($(HAS_NVIDIA),1)
TORCH_SOURCE :=
else
# The CPU wheel index; --retries 0 keeps an unreachable index from stalling the install.
TORCH_SOURCE := --extra-index-url https://download.pytorch.org/whl/cpu --retries 0
endif

.PHONY: setup demo test lint clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION) $(TORCH_SOURCE)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(PY) sweeps/paper_grid.py $(ARGS)

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q $(ARGS)

lint: $(VENV)/.installed
	$(PY) -m ruff check .

clean-venv:
	rm -rf $(VENV)
