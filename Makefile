# make install | demo | test | test-all | lint | bench
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?= datasets
DEMO_OUT ?= outputs/demo
SYSTEM_PACKAGES := fluidsynth fluid-soundfont-gm libsndfile1 ffmpeg
PYTEST_FLAGS ?=
RUNS ?= runs
# One torch thread per process: on small shared CPUs two threads are several times slower.
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
# Demo runs log to CSV (no W&B account needed) under fixed run names.
DEMO_RUN := $(PY) train.py paths.data_dir=$(DATA) paths.runs_dir=$(RUNS) logger=csv
DEMO_EVAL := $(PY) evaluate.py paths.data_dir=$(DATA) paths.runs_dir=$(RUNS)
CODEC_CKPT := $(RUNS)/demo-compression/checkpoints/last.ckpt
MT3_CKPT := $(RUNS)/demo-mt3/checkpoints/last.ckpt
SEPARATION_CKPT := $(RUNS)/demo-separation/checkpoints/last.ckpt
DIFFUSION_CKPT := $(RUNS)/demo-diffusion/checkpoints/last.ckpt
MUSICGEN_CKPT := $(RUNS)/demo-musicgen-melody/checkpoints/last.ckpt

.PHONY: install constraints system-packages demo demo-data demo-compression demo-diffusion demo-separation demo-mt3 demo-musicgen test test-all lint bench clean

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

# constraints.txt: the versions the test suite last passed with (`make constraints` rewrites it).
$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

constraints: install
	$(PY) -m pip freeze --exclude-editable | grep -v '^-e ' > constraints.txt

# The main job on the embedded default (about 25 minutes on 2 cores): build the synthetic dataset,
# inspect and preview it, then train and evaluate each solver's CPU-tiny preset on it.
demo: demo-data demo-compression demo-diffusion demo-separation demo-mt3 demo-musicgen

demo-data: install
	@test -f $(DATA)/synth/index.json || $(PY) -m data.prepare synth --out $(DATA)/synth
	$(PY) -m data.inspect "$(DATA)/synth/*.tar" --fields audio,stems,notes,caption
	$(PY) -m data.preview $(DATA)/synth --out $(DEMO_OUT)

demo-compression: demo-data
	$(DEMO_RUN) experiment=compression_tiny run.name=demo-compression
	$(DEMO_EVAL) solver=compression checkpoint=$(CODEC_CKPT)

# A MultiBand-Diffusion decoder of the tiny codec's 3-codebook tokens; the table compares it with
# the codec's own decoder.
demo-diffusion: demo-compression
	$(DEMO_RUN) experiment=diffusion_tiny run.name=demo-diffusion
	$(DEMO_EVAL) solver=diffusion checkpoint=$(DIFFUSION_CKPT)

# A CPU-tiny Spleeter-style separator (about 5 minutes), then its SDR table against the mixture.
demo-separation: demo-data
	$(DEMO_RUN) experiment=separation_tiny run.name=demo-separation
	$(DEMO_EVAL) solver=separation checkpoint=$(SEPARATION_CKPT)

demo-mt3: demo-data
	$(DEMO_RUN) experiment=mt3_tiny run.name=demo-mt3
	$(DEMO_EVAL) solver=mt3 checkpoint=$(MT3_CKPT)

# MusicGen-Melody on the tiny codec's tokens; then a sample that follows a held-out test melody.
demo-musicgen: demo-compression
	$(DEMO_RUN) experiment=musicgen_melody_tiny run.name=demo-musicgen-melody
	$(DEMO_EVAL) solver=musicgen_melody checkpoint=$(MUSICGEN_CKPT)
	$(PY) -m data.preview $(DATA)/synth --split test --seconds 8 --melody --out $(DEMO_OUT)/melody
	melody=$$(ls $(DEMO_OUT)/melody/*.melody.wav | head -n 1); \
	$(PY) -m musicgen.generate --checkpoint $(MUSICGEN_CKPT) --text "$$(cat $${melody%.melody.wav}.txt)" \
	  --melody $$melody --duration 8 --out $(DEMO_OUT)/musicgen_melody_sample.wav

test: install
	$(PY) -m pytest $(PYTEST_FLAGS)

# test-all also checks the Spleeter conversion against TensorFlow (the parity extra).
test-all: install
	$(PY) -m pip install -q -e ".[parity]"
	$(PY) -m pytest -m "" $(PYTEST_FLAGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	$(PY) benchmarks/data_throughput.py --data-wait compression_tiny,mt3_tiny,musicgen_melody_tiny
	$(PY) benchmarks/compression.py
	$(PY) benchmarks/transcription.py
	$(PY) benchmarks/scaling.py
	$(PY) benchmarks/musicgen_lm.py
	$(PY) benchmarks/separation.py
	$(PY) benchmarks/diffusion.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
