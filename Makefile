# Each target sets itself up: a virtualenv in .venv with sidjax and its deps,
# and (where apt and root are available) Debian's offline Fashion-MNIST.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist

.PHONY: demo test test-slow bench data lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# Offline Fashion-MNIST from Debian; skipped where it is present or apt is not usable
# (elsewhere give the original files with --manual-dir, or let TFDS download them).
data:
	@if [ ! -f $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	fi

demo: $(VENV)/.installed data
	$(PY) -m sidjax compare --out runs/compare --overwrite

# Two workers (pytest-xdist): most tests are compile-bound and single-threaded.
test: $(VENV)/.installed data
	$(PY) -m pytest -q -n 2

test-slow: $(VENV)/.installed data
	$(PY) -m pytest -q -m slow

bench: $(VENV)/.installed data
	$(PY) -m experiments.bench_step
	$(PY) -m experiments.bench_epoch --runs trunk:mlp:sid,trunk:mlp:bp

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) runs
