# The README's two commands: `make run` (the whole pipeline) and `make test` (the test suite).
# Each creates or reuses .venv and installs what it needs. On a machine without an NVIDIA GPU the
# CPU build of torch is installed (never the multi-GB CUDA build).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH_VERSION   ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: run demo test system-packages lint bench bench-fetch bench-features bench-dedup-quality bench-neardup bench-shards bench-fid bench-timelapse bench-train-speed bench-train-quality dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first, so that installing the project finds it satisfied: a local wheel if pip has one
# (find-links), else the CUDA build when a GPU is present, else the CPU-only index.
$(VENV)/.torch: | $(BIN)/python
	$(BIN)/pip install -q --no-index --no-deps "torch==$(TORCH_VERSION)" 2>/dev/null \
	  || { if nvidia-smi -L >/dev/null 2>&1; then $(BIN)/pip install -q "torch==$(TORCH_VERSION)"; \
	       else $(BIN)/pip install -q "torch==$(TORCH_VERSION)" --index-url $(TORCH_CPU_INDEX); fi; }
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps --upgrade --target $(VENV)/reference "torch-fidelity==0.4.0"
	touch $@

# `make run` is a smoke run of everything that ends within 15 minutes on 2 CPU cores (README: measured
# figures): each of EXPERIMENTS is trained for TRAIN_STEPS steps and every checkpoint is scored on EVAL_SAMPLES
# generated images (FID/KID). `make run TRAIN_STEPS=` trains to the experiments' own step counts
# (config/experiments.yaml), resuming; `EXPERIMENTS=` trains every experiment; `EVAL_SAMPLES=` scores on what
# the experiment's last evaluation used (else 1000). tests/test_make_run.py runs these very settings.
TRAIN_STEPS ?= 100
EVAL_SAMPLES ?= 128
EXPERIMENTS ?= dogs satellite conditional_all
run: $(VENV)/.installed
	$(BIN)/gan-pipelines run $(if $(TRAIN_STEPS),--train-steps $(TRAIN_STEPS)) $(if $(EVAL_SAMPLES),--eval-samples $(EVAL_SAMPLES)) $(if $(EXPERIMENTS),--experiments $(EXPERIMENTS))

# The whole pipeline offline on the NASA Blue Marble tiles in demo/tiles, served by a loopback tile server;
# its own Dagster instance and data under .demo/ (see assets/demo.py).
demo: $(VENV)/.installed
	$(BIN)/gan-pipelines demo

# System packages that some tests use: a PostgreSQL server (tests/test_deploy.py) and Chromium (the UI test).
# Installed with apt-get when missing and running as root; otherwise a note, and those tests skip.
system-packages:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium fonts-dejavu-core"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing system packages:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q --no-install-recommends $$missing >/dev/null 2>&1 \
	    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends $$missing >/dev/null 2>&1; } \
	    || echo "note: could not install$$missing; the tests that need them will skip"; \
	else echo "note: missing system packages:$$missing (root can apt-get install them); the tests that need them will skip"; fi

test: $(VENV)/.installed system-packages
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# Benchmarks are run by hand; figures go to benchmarks/README.md. The real-image ones read ../shared/fixtures.
bench: bench-fetch bench-features bench-dedup-quality bench-neardup bench-shards bench-fid bench-timelapse bench-train-speed bench-train-quality

bench-fetch bench-features bench-dedup-quality bench-neardup bench-shards bench-fid bench-timelapse bench-train-speed bench-train-quality: $(VENV)/.installed
	$(BIN)/python benchmarks/$(subst -,_,$(subst bench-,bench_,$@)).py

dev: $(VENV)/.installed
	$(BIN)/gan-pipelines dev

clean:
	rm -rf $(VENV) .dagster_home .demo data .pytest_cache
