# `make demo` and `make test` build .venv from the pinned requirements on first use.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
WORKDIR ?= runs/toy2d

$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt -r requirements-test.txt
	$(VENV)/bin/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

.PHONY: env demo exact-demo test test-fast bench
env: $(STAMP)

# Trains HOLD on the multimodal swiss roll (about 6 minutes on 2 CPU cores; resumes if interrupted), then samples.
demo: $(STAMP)
	$(VENV)/bin/python -m hold_jax.main --config configs/toy2d.py --workdir $(WORKDIR)
	$(VENV)/bin/python -m hold_jax.main --config configs/toy2d.py --workdir $(WORKDIR) --mode=sample

# The sampler alone on a Gaussian ring with its exact score: no training, under a minute.
exact-demo: $(STAMP)
	$(VENV)/bin/python -m hold_jax.cli.demo --config configs/mixture_demo.py --workdir runs/exact_demo

# Two workers, whole files each (module fixtures are built once): the suite waits on subprocesses a lot.
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile tests

# The tests not marked slow (each slow one takes over about 20 s): a quick check while editing.
test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile -m "not slow" tests

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/process.py
	$(VENV)/bin/python benchmarks/train_speed.py
