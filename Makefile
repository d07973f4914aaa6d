# Two entry points for a fresh machine: `make quickstart` and `make test`.
# Both create the virtualenv from pyproject.toml (pinned to the tested set in
# constraints.txt) and install Fashion-MNIST from Debian when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup data test test-fast quickstart clean-venv
setup: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# pip compiles what it installs one file at a time (about a minute here); compileall does it on every core.
	# Not left to import time: where PYTHONDONTWRITEBYTECODE=1 (this machine), nothing compiled then is kept.
	$(PY) -m pip install -q --no-compile -c constraints.txt -e ".[test,trackers]"  # the tests read W&B and MLflow runs back
	$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null || true  # a few files are for newer Pythons; pip skips them too
	touch $@

data: $(FMNIST)
$(FMNIST):
	@if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; \
	else echo "error: Fashion-MNIST is missing; install Debian's dataset-fashion-mnist as root" >&2; exit 2; fi

# The tests run on TEST_WORKERS processes (pytest-xdist), one thread each (tests/conftest.py). In the whole
# suite a module's tests stay on one process (--dist loadscope), so a fixture's training run is made once;
# the fast tier has none and balances test by test (docs/tests.md has both times).
TEST_WORKERS ?= 2

test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope

# The everyday tier: everything but the real training runs (about 1 minute here).
test-fast: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow"

quickstart: setup
	PYTHON=$(PY) bash scripts/quickstart.sh

clean-venv:
	rm -rf $(VENV)
