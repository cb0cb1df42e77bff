# recalign: the two commands of the README.
#   make run   - install everything into .venv, then run the main flow (NewsRecFlow) on the embedded synthetic data
#   make test  - install everything into .venv, then run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.recalign-installed

# Metaflow refuses "root" as a user name; pick a neutral one when nothing better is set.
export METAFLOW_USER ?= $(or $(filter-out root,$(USER)),recalign)
export PYTHONUNBUFFERED := 1
# Main flow and its default config (override: make run FLOW=flows/align_flow.py CONFIG=configs/align_quick.yaml).
FLOW ?= flows/newsrec_flow.py
CONFIG ?=
MAX_WORKERS ?= 2
# make test: pytest-xdist workers (0 = one process); the tests that share a flow run stay on one worker (tests/conftest.py)
TEST_WORKERS ?= 2
RUN_ARGS ?=

.PHONY: install run test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	# MovieLens-100K as data only: the RecBole 1.2.1 wheel (MIT) ships ml-100k.inter/.item; --no-deps
	# keeps its torch/scipy pins out (nothing imports recbole; steps/movielens.py only reads its files).
	$(PY) -m pip install --quiet --no-deps recbole==1.2.1
	touch $(STAMP)

run: $(STAMP)
	$(PY) $(FLOW) $(if $(CONFIG),--config config $(CONFIG)) run --max-workers $(MAX_WORKERS) $(RUN_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_align.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .metaflow .recalign .pytest_cache .hypothesis
