# Two commands do all the set-up: `make run` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Arguments for the main job, e.g. `make run ARGS="algo.beta=15 actors.count=4"`.
ARGS   ?=

.PHONY: run test test-slow test-all bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/divcfg train $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow

test-all: $(VENV)/.installed
	$(PY) -m pytest -q -m "slow or not slow"

bench: $(VENV)/.installed
	$(VENV)/bin/divcfg bench all --json BENCH_RESULTS.json

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
