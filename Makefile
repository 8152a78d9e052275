# mixvae: `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# torch comes from this pin; on the reference machine both wheels lie on disk (see README).
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
# The data mirror next to the checkout, when there is one; otherwise $MIXVAE_DATA_DIR or ./data.
MIXVAE_DATA_DIR ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),)
export MIXVAE_DATA_DIR
PYTEST_ARGS ?=
# make bench: where the two files go, flags for both scripts (e.g. --cpu-time on a shared machine) and a line about
# the machine, e.g. make bench BENCH_DIR=results/benchmarks/my_cpu BENCH_ARGS=--cpu-time BENCH_NOTE="quiet machine"
BENCH_DIR ?= results/benchmarks
BENCH_ARGS ?=
BENCH_NOTE ?=

.DEFAULT_GOAL := help
.PHONY: help install test test-full lint smoke quickstart bench results clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH_PIN)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]" $(TORCH_PIN)
	touch $@

install: $(VENV)/.installed ## create .venv and install mixvae with its dev tools (torch pinned)

test: install ## the fast test suite (a few minutes; W&B offline, no GPU needed)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-full: install ## every test, the slow statistical and end-to-end ones too
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install ## ruff
	$(VENV)/bin/ruff check mixvae tests scripts experiments train.py

smoke: install ## a tiny end-to-end training run (one epoch of 20 batches, no W&B)
	$(PY) train.py +experiment=quickstart train.epochs=1 train.max_batches=20 eval.iwae_samples=10 \
		eval.max_batches=2 logger=none hydra.run.dir=outputs/smoke resume=false

quickstart: install ## the main job: a short mixture-VAE (Graves, K=5) training run on MNIST
	$(PY) train.py +experiment=quickstart

bench: install ## speed benchmarks -> $(BENCH_DIR)/{mixture_rsample,train_throughput}.md
	$(PY) scripts/bench_rsample.py --out $(BENCH_DIR)/mixture_rsample.md $(BENCH_ARGS) $(if $(BENCH_NOTE),--note "$(BENCH_NOTE)")
	$(PY) scripts/bench_train.py --out $(BENCH_DIR) $(BENCH_ARGS) $(if $(BENCH_NOTE),--note "$(BENCH_NOTE)")

results: install ## rebuild results/*.md and results/*.png from the committed results/runs/ (offline, seconds)
	$(PY) scripts/make_results.py

clean: ## remove caches and run outputs (keeps .venv and data)
	rm -rf outputs multirun wandb .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
