# Two entry points, both safe on a fresh machine:
#   make quickstart   create .venv, install streamer, run pipelines/quickstart.yml
#   make test         create .venv, install test dependencies and services, run the tests
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: quickstart test lint venv services bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

venv: $(BIN)/python
	$(BIN)/pip install -q -e '.[fast,trio]'

quickstart: venv
	$(BIN)/streamer run pipelines/quickstart.yml

services: $(BIN)/python
	$(BIN)/pip install -q -e '.[fast,trio,kafka,postgres,aws,test]'
	@for script in scripts/setup/*.sh; do [ -e "$$script" ] || continue; echo "== $$script"; bash "$$script" || exit 1; done

test: services
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/streamer lint pipelines/*.yml
