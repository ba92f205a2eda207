# The README's two set-up commands, spelled out. torch is pinned first: an unpinned torch pulls a multi-GB CUDA build.
VENV ?= .venv
PY = $(VENV)/bin/python

.PHONY: setup train test bench-smoke overhead clean

$(PY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[test]'

setup: $(PY)

train: setup  ## the main job: Chunk-GRPO on ShapeWorld, on CPU
	$(VENV)/bin/genrl train

test: setup
	$(PY) -m pytest -q

bench-smoke: setup
	$(VENV)/bin/genrl bench smoke --out bench_out/smoke

overhead: setup
	$(PY) -m genrl.benchmarks.overhead

clean:
	rm -rf runs bench_out .pytest_cache
