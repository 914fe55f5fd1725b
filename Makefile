# Bootstraps .venv from the project's own files; every target below builds it first if missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench regenerate regenerate-paper clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[test]"
	touch $@

demo: $(VENV)/.installed  ## quick demo on the synthetic dataset (a few minutes on CPU)
	$(PY) -m mkdlib demo --out demo

test: $(VENV)/.installed  ## the test suite (real-data tests skip without MKDLIB_DATA / MKDLIB_VGG16_WEIGHTS)
	$(PY) -m pytest -q

bench: $(VENV)/.installed  ## throughput against the released code's way of computing
	$(PY) -m mkdlib.bench

regenerate: $(VENV)/.installed  ## every notebook, smoke profile, into results/executed/
	$(PY) -m mkdlib.regenerate --profile smoke

regenerate-paper: $(VENV)/.installed  ## every notebook with the paper's protocol (days on CPU)
	$(PY) -m mkdlib.regenerate --profile paper

clean:
	rm -rf $(VENV) demo .pytest_cache
