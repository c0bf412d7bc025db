# The two commands a newcomer needs: `make serve` and `make test`. Everything else is a step of those.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
REPO ?= models/repository
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001

# One step at a time: the dev and load environments install the same tree (its egg-info).
.NOTPARALLEL:

.PHONY: serve test install install-dev install-load repository protos lint check-protos clean test-tools

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install only when the dependency list changes.
$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[$*]"
	touch $@

install: $(VENV)/.installed-models
install-dev: $(VENV)/.installed-dev

# The load-testing kit's own environment: locust runs on gevent and must never constrain the
# gateway's or the tests' dependencies (loadtest/README.md). The suite runs the locustfile in it
# (tests/integration/test_locust.py looks for it at this path).
LOAD_VENV := .venv-load
$(LOAD_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(LOAD_VENV)
	$(LOAD_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOAD_VENV)/bin/python -m pip install --quiet -e ".[load]"
	touch $@

install-load: $(LOAD_VENV)/.installed

$(REPO)/.built: models/build_repository.py | install
	$(BIN)/python models/build_repository.py --output $(REPO)
	touch $@

repository: $(REPO)/.built

## serve: install, build the demo model repository, serve it on HTTP 8000 and gRPC 8001.
serve: repository
	$(BIN)/gateway serve --model-repository $(REPO) --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT)

# Test-only tools from Debian, installed where apt-get can (root); their tests skip, saying
# why, where they cannot be installed.
test-tools:
	@command -v prometheus >/dev/null 2>&1 || { \
	  apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && \
	    apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1; } || \
	  echo "make test: could not install Debian's prometheus; its query test will skip"; }

## test: install the dev environment and run linters, type checks and the whole test suite.
test: install-dev install-load test-tools
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

## protos: regenerate gateway/generated from protos/ (a test fails if the checked-in code drifts).
protos: install-dev
	$(BIN)/python scripts/gen_protos.py

clean:
	rm -rf $(VENV) $(LOAD_VENV) $(REPO) .pytest_cache .mypy_cache .ruff_cache
