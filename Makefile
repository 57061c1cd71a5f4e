# Every target creates the virtual environment it needs, so a fresh clone
# runs `make demo` or `make test` with nothing installed beforehand.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU build of torch; installed before the project so that pip never
# resolves torch on its own and pulls a multi-gigabyte CUDA build.
TORCH_PIN := torch==2.13.0

DEMO_MODEL := $(firstword $(wildcard ../shared/models/facenet_onet.safetensors) tests/data/facenet_onet.safetensors)
DEMO_DIR := out/demo

.PHONY: all install demo test bench bench-rd bench-speed bench-accuracy bench-modes clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e '.[test,plot]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	mkdir -p $(DEMO_DIR)
	$(VENV)/bin/wcodec encode $(DEMO_MODEL) -o $(DEMO_DIR)/model.wbs --force
	$(VENV)/bin/wcodec decode $(DEMO_DIR)/model.wbs -o $(DEMO_DIR)/restored.safetensors --force
	$(VENV)/bin/wcodec stats $(DEMO_DIR)/model.wbs

test: $(STAMP)
	$(PY) -m pytest -q

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,plot,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) bench/quality.py --write

bench-modes: $(BENCH_STAMP)
	$(PY) bench/modes.py --write

bench-rd: $(BENCH_STAMP)
	$(PY) bench/rd.py --write

bench-speed: $(BENCH_STAMP)
	$(PY) bench/speed.py --write

bench-accuracy: $(BENCH_STAMP)
	$(PY) bench/accuracy.py --write

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
