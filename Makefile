# Every target that needs Python sets up its own virtual environment first, so a fresh clone needs only
# `make demo` (the main job) or `make test` (the test suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
ENV_FILE ?= $(if $(wildcard .env),.env,.env.example)
PYTEST_ARGS ?=

.PHONY: help setup setup-trainer setup-test system-deps preflight demo test test-fast lint format docs bench gpu-check \
        build train preflight-docker logs test-image host-check clean

help:
	@echo "make demo        set up and run tiny training on the CPU twice (shows the resume)"
	@echo "make test        set up and run the test suite"
	@echo "make preflight   print the preflight report for $(ENV_FILE) (no Docker, no torch needed)"
	@echo "make lint        ruff, hadolint and compose checks"
	@echo "make bench       benchmarks (see bench/README.md)"
	@echo "make build / train / preflight-docker / logs / test-image / host-check: see README"

$(VENV)/.stamp-base: pyproject.toml
	$(PY) -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv $(VENV)
	$(PIP) install -e .
	touch $@

$(VENV)/.stamp-trainer: $(VENV)/.stamp-base
	$(PIP) install -e '.[trainer]'
	touch $@

$(VENV)/.stamp-test: $(VENV)/.stamp-trainer
	$(PIP) install -e '.[trainer,test]'
	touch $@

setup: $(VENV)/.stamp-base
setup-trainer: system-deps $(VENV)/.stamp-trainer
setup-test: system-deps $(VENV)/.stamp-test

system-deps:
	@bash scripts/install-system-deps.sh

# Every target below follows one rule: it fails (make exits non-zero and prints the command's own exit
# code) when the check or the training failed, and succeeds when it passed, warnings included.
preflight: setup
	@$(VENV)/bin/preflight check --env-file $(ENV_FILE)

demo: setup-trainer
	$(PY) -m tools.demo

# The container tests drive a real Docker Engine and Docker Compose v2: a daemon is started when none runs
# (and only that one is stopped afterwards); without one they are skipped with the reason.
test: setup-test
	@bash scripts/docker-engine.sh start $(PY)
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; bash scripts/docker-engine.sh stop; exit $$rc

test-fast: setup-test
	$(PY) -m pytest -m "not slow and not container" $(PYTEST_ARGS)

lint: setup-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/hadolint docker/Dockerfile
	$(PY) -m tools.compose_check compose.yaml compose.cpu.yaml

docs: setup
	$(PY) scripts/update_docs.py

format: setup-test
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup-test
	$(PY) -m bench

gpu-check: setup-trainer
	$(PY) -m bench.gpu_check

# --- container targets (Docker with the NVIDIA Container Toolkit; docs/proxmox.md) -------------------------
# compose.yaml reads .env (copy .env.example); COMPOSE_FILE in .env selects compose.cpu.yaml or
# compose.gpu-ids.yaml for every target below.
build:
	docker compose build train

# `docker compose up` exits 0 even when the container gave up (restart budget spent): the exit code is
# the container's last one, read back once Compose returns.
train:
	@docker compose up train; up=$$?; [ $$up -eq 0 ] || exit $$up; \
	code="$$(docker inspect --format '{{.State.ExitCode}}' $$(docker compose ps --all --quiet train))"; \
	[ "$$code" = 0 ] || { echo "training failed: the train container exited with code $$code" >&2; exit $$code; }

preflight-docker:
	docker compose run --rm preflight

logs:
	docker compose logs -f train

# The container tests alone: the image built with Docker Compose from a local base, the users' workflow.
test-image: setup-test
	@bash scripts/docker-engine.sh start $(PY)
	@$(PY) -m pytest -m container tests/container -s $(PYTEST_ARGS); rc=$$?; bash scripts/docker-engine.sh stop; exit $$rc

host-check: setup
	@bash scripts/host-check.sh --env-file $(ENV_FILE)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
