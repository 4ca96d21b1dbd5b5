# elastica: every command a researcher types. `make help` lists them.
#   make demo                 the toy-world study end to end on this machine (first command of the README)
#   make setup [PYTHON=python3.12]  the venv (on a login node: the image's Python, containers/versions.env)
#   make test                 the test suite (second command): lint and type check, then every test
#                             (files in pytest-xdist workers, one per core, at most 4; every Slurm test in one file)
#   make test-fast            lint and the unit tests (spec, plan, collector, CLI; under a minute)
#   make lint                 ruff (pyflakes, bugbear, pycodestyle layout) and mypy (pyproject.toml)
#   make plan CONFIG=...      what a study will run, before anything runs
#   make local CONFIG=...     run a study on this machine, stage by stage
#   make submit CONFIG=... PROFILE=...   submit a study to Slurm (ARGS="--dry-run" / "--wait")
#   make submit-setting1|2|3 PROFILE=... the paper's studies
#   make status RUN=runs/<experiment>    cells by stage and state; make cancel RUN=...
#   make prefetch CONFIG=... PROFILE=...  login node: fill the profile's HF cache, check that every volume fits
#   make prefetch-setting1|2|3 PROFILE=...   the same for every config of a setting (what submit-settingN needs)
#   make collect RUN=runs/<experiment>   tables and plots
#   make toy-world                       the studies of docs/toy-world.md, timed, and its tables (91 min on 2 cores)
#   make wandb-sync RUN=runs/<experiment>  upload the study's offline W&B runs (grouped by study and stage)
#   make bench                           every benchmark under bench/ -> docs/benchmarks.md
#   make gpu-check [GPU_CHECK_ARGS=--smoke]  prove the GPU path on one GPU (docs/gpu-check.md)
#   make gpu-bundle [PYTHON_VERSION=3.12]    every wheel gpu-check needs beside torch, for a GPU machine offline
#   make container [STACK=cpu]           build the Apptainer image (cluster build node; apptainer needed)
#   make sandbox / make shell [PROFILE=...] [RUN=...]   a writable sandbox / a shell in the image, binds as jobs
#   make debug-cell RUN=... CELL=stage/cell-id [IMAGE=...] [INVALIDATE=1]   rerun one cell as its job does
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# pytest-xdist workers for make test: one per core, at most 4 (on 2 cores a third made the suite slower on
# 2026-12-04: 23.7 against 22.3 min, each worker builds its own fixtures)
TEST_WORKERS ?= $(shell n=$$(nproc); echo $$(( n < 4 ? n : 4 )))
CONFIG ?= configs/toy/setting2.yaml
PROFILE ?= configs/profiles/local-cpu.yaml
RUNS ?= runs
# cells at once in make demo and make local (the local executor's --jobs)
JOBS ?= 2
export PYTHONUNBUFFERED := 1
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions

include containers/versions.env
STACK ?= cuda
DEF := $(if $(filter cpu,$(STACK)),containers/elastica-cpu.def,containers/elastica.def)
IMAGE_NAME := containers/elastica-$(STACK)-py$(PYTHON_VERSION)-$(shell date +%Y.%m.%d).sif
BUILD_ARGS := --build-arg BASE_IMAGE=$(BASE_IMAGE) --build-arg CPU_BASE_IMAGE=$(CPU_BASE_IMAGE) \
	--build-arg PYTHON_VERSION=$(PYTHON_VERSION) --build-arg 'TORCH_CUDA_ARCH_LIST=$(TORCH_CUDA_ARCH_LIST)' \
	--build-arg GIT_COMMIT=$(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
IMAGE ?=

.PHONY: help setup lint test test-fast demo plan local submit submit-setting1 submit-setting2 submit-setting3 status cancel \
	prefetch prefetch-setting1 prefetch-setting2 prefetch-setting3 collect clean container sandbox shell debug-cell bench gpu-check gpu-bundle wandb-sync toy-world

help:
	@grep -E '^#   make' Makefile | sed 's/^#   //'

PYTHON ?= python3
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0   # first and pinned: an unpinned torch pulls a multi-GB CUDA build
	$(PY) -m pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 tests   # tests/conftest.py

test-fast: lint
	$(PY) -m pytest -q -m "not slow" --durations=5 tests

plan: setup
	$(PY) -m launch plan $(CONFIG) --profile $(PROFILE) --runs $(RUNS)

local: setup
	$(PY) -m launch run $(CONFIG) --profile $(PROFILE) --runs $(RUNS) --jobs $(JOBS)

demo: setup   # two cells at once (--jobs; a stage of one cell takes every core)
	$(PY) -m launch run configs/toy/setting2.yaml --profile configs/profiles/local-cpu.yaml --runs $(RUNS) --jobs $(JOBS)
	$(PY) -m launch collect $(RUNS)/toy-setting2

toy-world: setup   # the ten studies of docs/toy-world.md, timed, then its tables (91.4 min measured on 2 cores)
	OMP_NUM_THREADS=1 $(PY) docs/toy_world_report.py --run --jobs 2 $(RUNS)

submit: setup
	$(PY) -m launch submit $(CONFIG) --profile $(PROFILE) $(ARGS)

# every config of the setting, each one's outcome reported; non-zero at the end if any was refused or failed
submit-setting1 submit-setting2 submit-setting3: submit-setting%: setup
	@bad=""; for c in configs/setting$*/*.yaml; do echo "== $$c"; \
	  $(PY) -m launch submit $$c --profile $(PROFILE) $(ARGS) || bad="$$bad $$c"; done; \
	echo "== submit-setting$*: $(words $(wildcard configs/setting$*/*.yaml)) configs, refused or failed:$${bad:- none}"; \
	test -z "$$bad"

status: setup
	$(PY) -m launch status $(RUN)

cancel: setup
	$(PY) -m launch cancel $(RUN)

prefetch: setup
	$(PY) -m launch prefetch $(CONFIG) $(if $(filter-out configs/profiles/local-cpu.yaml,$(PROFILE)),--profile $(PROFILE))

prefetch-setting1 prefetch-setting2 prefetch-setting3: prefetch-setting%: setup
	@bad=""; for c in configs/setting$*/*.yaml; do echo "== $$c"; \
	  $(PY) -m launch prefetch $$c --profile $(PROFILE) || bad="$$bad $$c"; done; \
	echo "== prefetch-setting$*: failed:$${bad:- none}"; test -z "$$bad"

collect: setup
	$(PY) -m launch collect $(RUN)

wandb-sync: setup   # from the login node: upload every offline W&B run of a study (WANDB_API_KEY in your shell)
	@test -d "$(RUN)" || { echo "error: RUN: give RUN=runs/<experiment> (a run folder)"; exit 2; }
	$(VENV)/bin/wandb sync $$(find "$(RUN)" -type d -name 'offline-run-*' | sort)

bench: setup
	$(PY) bench/run_all.py

# on a GPU machine without this venv (torch from the machine, the rest from wheels): make gpu-check PY=python3
gpu-check:
	$(PY) tests/gpu_check.py $(GPU_CHECK_ARGS)

# on a machine with PyPI, for the GPU machine's Python (versions.env's by default); copy gpu-bundle/ there
gpu-bundle: setup
	$(PY) containers/gpu_bundle.py --python $(PYTHON_VERSION) --out gpu-bundle

clean:
	rm -rf $(RUNS) .pytest_cache

container:
	@command -v apptainer >/dev/null || { echo "error: apptainer binary not found (build on a node that has it)"; exit 2; }
	apptainer build --fakeroot $(BUILD_ARGS) $(IMAGE_NAME) $(DEF)
	@echo "built $(IMAGE_NAME): set image: $(CURDIR)/$(IMAGE_NAME) in your profile"

sandbox:
	@command -v apptainer >/dev/null || { echo "error: apptainer binary not found"; exit 2; }
	apptainer build --fakeroot --sandbox $(BUILD_ARGS) containers/sandbox-$(STACK) $(DEF)

shell: setup
	@command -v apptainer >/dev/null || { echo "error: apptainer binary not found"; exit 2; }
	$(PY) -m launch shell --image $(or $(IMAGE),containers/sandbox-$(STACK)) $(if $(filter-out configs/profiles/local-cpu.yaml,$(PROFILE)),--profile $(PROFILE)) $(if $(RUN),--run $(RUN))

debug-cell: setup
	@test -n "$(RUN)" -a -n "$(CELL)" || { echo "error: RUN and CELL: give RUN=runs/<experiment> CELL=<stage>/<cell id> (see make status RUN=...)"; exit 2; }
	$(PY) -m launch debug-cell "$(RUN)" "$(CELL)" $(if $(IMAGE),--image $(IMAGE)) $(if $(INVALIDATE),--invalidate)
