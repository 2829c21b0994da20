# Two entry points do all set-up: `make demo` and `make test`.
# Both create .venv when missing and install what they need (CPU torch pinned where no NVIDIA GPU).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.blockprune-installed
export MLFLOW_DISABLE_TELEMETRY ?= true
export DO_NOT_TRACK ?= true
export RAY_USAGE_STATS_ENABLED ?= 0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-quick lint bench clean gpu-check gpu-check-dry-run

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh
	bash scripts/install.sh $(VENV)
	touch $(STAMP)

demo: install
	$(PY) -m blockprune.jobs.calibrate --model smollm2-135m --corpus wikipedia --method shortgpt --prune 4

test: install
	bash scripts/in-netns.sh $(PY) -m pytest -q

test-quick: install
	bash scripts/in-netns.sh $(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check blockprune tests benchmarks

# On a GPU machine only the working tree arrives (no registry): no install step, the image's python
# (torch, transformers, accelerate) runs the check; here the venv's python does when it exists.
GPU_PY := $(if $(wildcard $(PY)),$(PY),python3)

gpu-check:
	$(GPU_PY) benchmarks/gpu_check.py

gpu-check-dry-run:
	$(GPU_PY) benchmarks/gpu_check.py --dry-run

clean:
	rm -rf $(VENV) build *.egg-info
