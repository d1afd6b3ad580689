# `make demo` and `make test` build .venv from the pinned requirements on first use.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
WORKDIR ?= runs/demo

$(STAMP): requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt -r requirements-test.txt
	touch $(STAMP)

.PHONY: env demo test bench
env: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python -m hold_jax.main --config configs/mixture_demo.py --workdir $(WORKDIR)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q tests

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/process.py
