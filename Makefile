# make setup : create .venv with the project and its dev tools (CPU torch without an NVIDIA GPU)
# make demo  : the main job; with no dataset configured it runs the built-in phantom demo
# make test  : ruff and the test suite (offline, CPU) but its few slow end-to-end sweeps
# make test-slow : those (Ray sweeps of a few trials each); .ci/run runs both
# make lock  : rewrite requirements-lock.txt, the exact versions in .venv (torch aside), which
#              every node of ray_cluster.yaml installs
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION := 2.13.0
LOCK := requirements-lock.txt
HAS_NVIDIA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
ifeq ($(HAS_NVIDIA),1)
TORCH_SOURCE :=
else
# The CPU wheel index; --retries 0 keeps an unreachable index from stalling the install.
TORCH_SOURCE := --extra-index-url https://download.pytorch.org/whl/cpu --retries 0
endif

.PHONY: setup demo test test-slow lint lock clean-venv

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
	$(PY) -m pytest -q -m "not slow" $(ARGS)

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow $(ARGS)

lint: $(VENV)/.installed
	$(PY) -m ruff check .

# torch stays out: ray_cluster.yaml installs TORCH_VERSION's CPU build on the head and its
# CUDA build on the GPU workers. Nothing is installed here: it reads .venv as it is.
lock:
	@test -x $(PY) || { echo "no $(VENV): run make setup first"; exit 1; }
	{ echo "# Exact versions of vlsm-echo's dependencies and dev tools, from \`make lock\`: pip freeze"; \
	  echo "# --exclude-editable of $(VENV), without torch (each node installs the build for its hardware)."; \
	  echo "# The interpreter they were resolved for, which every node runs:"; \
	  echo "# python==$$($(PY) -c 'import platform; print(platform.python_version())')"; \
	  $(PY) -m pip freeze --exclude-editable | grep -iv '^torch=='; } > $(LOCK).tmp && mv $(LOCK).tmp $(LOCK)

clean-venv:
	rm -rf $(VENV)
