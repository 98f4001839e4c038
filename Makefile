# Two entry points, both safe on a fresh machine:
#   make quickstart   create .venv, install streamer, run pipelines/quickstart.yml
#   make test         create .venv, install test dependencies and services, run the tests
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: quickstart test lint venv services bench mutate

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

venv: $(BIN)/python
	$(BIN)/pip install -q -e '.[fast,trio]'

quickstart: venv
	$(BIN)/streamer run pipelines/quickstart.yml

services: $(BIN)/python
	$(BIN)/pip install -q -e '.[fast,trio,kafka,postgres,aws,mongo,registry-http,test]'
	@for script in scripts/setup/*.sh; do [ -e "$$script" ] || continue; echo "== $$script"; bash "$$script" || exit 1; done

test: services
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/streamer lint pipelines/*.yml

# Mutation testing of the promises (acknowledgement, draining): slow, never run by `make test` or CI.
# mutmut mutates a copy of the tree in mutants/; see docs/testing.md for the score and the survivors.
MUTATE_JOBS ?= 2
MUTANTS := 'streamer.core.delivery.*' 'streamer.core.runtime.*' \
	'streamer.inputs.http.xǁHttpInputǁanswer*' 'streamer.inputs.http.xǁHttpInputǁ_reply__*' \
	'streamer.inputs.http.xǁHttpInputǁ_deliver*' 'streamer.inputs.http.xǁHttpInputǁ_timed_out*' \
	'streamer.http.asyncio_server.xǁAsyncioHttpServerǁserve*' 'streamer.http.asyncio_server.xǁAsyncioHttpServerǁrun*' \
	'streamer.http.asyncio_server.xǁAsyncioHttpServerǁ_answer_in_task*' \
	'streamer.http.asyncio_server.xǁAsyncioHttpServerǁclosed*' 'streamer.http.asyncio_server.xǁ_HttpProtocolǁ_reply*' \
	'streamer.http.asyncio_server.xǁ_HttpProtocolǁ_write*' 'streamer.http.asyncio_server.xǁ_HttpProtocolǁdrain*' \
	'streamer.http.asyncio_server.xǁ_HttpProtocolǁexpire*'

mutate: $(BIN)/python
	$(BIN)/pip install -q -e '.[fast,trio,test]' 'mutmut>=3.3,<4'
	nice -n 19 $(BIN)/mutmut run --max-children $(MUTATE_JOBS) $(MUTANTS)
	$(BIN)/mutmut results
