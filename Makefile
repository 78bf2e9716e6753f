# Two commands do all the set-up: `make run` and `make test`. Both create .venv when it is missing (`make install`
# creates it alone).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Arguments for the main job, e.g. `make run ARGS="algo.beta=15 actors.count=4"`.
ARGS   ?=
# The world `make run` trains on (built first when missing): real music (README "Real-music world"). For the
# procedural world instead: `make run WORLD="world.size=small"`.
WORLD  ?= world.kind=music world.dir=worlds/music_small

.PHONY: install run test test-slow test-all bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,music]"
	# The real-music world's renderer and judge, without the requirements their wheels declare but the code never
	# uses (pyaudio needs PortAudio headers to build; TensorFlow and librosa): see the `music` extra in pyproject.toml.
	$(PY) -m pip install --quiet --no-deps -c constraints.txt tinysoundfont basic-pitch
	touch $@

install: $(VENV)/.installed  # .venv with divcfg and every extra the tests use, nothing run

run: $(VENV)/.installed
	$(VENV)/bin/divcfg train $(WORLD) $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow

test-all: $(VENV)/.installed
	$(PY) -m pytest -q -m "slow or not slow"

# Every benchmark, each to its own JSON; BENCHMARKS.md gives each one's options and the figures of record.
bench: $(VENV)/.installed
	for b in generate broadcast learner pipeline; do $(VENV)/bin/divcfg bench $$b --json bench/results/$$b.json || exit 1; done

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
