# make install | demo | test | test-all | lint | bench
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?= datasets
DEMO_OUT ?= outputs/demo
SYSTEM_PACKAGES := fluidsynth fluid-soundfont-gm libsndfile1 ffmpeg
PYTEST_FLAGS ?=

.PHONY: install system-packages demo test test-all lint bench clean

install: system-packages $(STAMP)

# FluidSynth (libfluidsynth3 for pyfluidsynth) and the General-MIDI soundfont, from Debian.
system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing system packages:$$missing (run: sudo apt-get install -y$$missing)"; exit 1; \
	  fi; \
	fi

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# The main job on the embedded default: build the synthetic dataset, inspect it, preview a sample.
demo: install
	@test -f $(DATA)/synth/index.json || $(PY) -m data.prepare synth --out $(DATA)/synth
	$(PY) -m data.inspect "$(DATA)/synth/*.tar" --fields audio,stems,notes,caption
	$(PY) -m data.preview $(DATA)/synth --out $(DEMO_OUT)

test: install
	$(PY) -m pytest $(PYTEST_FLAGS)

test-all: install
	$(PY) -m pytest -m "" $(PYTEST_FLAGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	$(PY) benchmarks/data_throughput.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
