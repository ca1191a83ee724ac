# The README's two commands: `make demo` (the whole cycle, offline) and `make test` (everything CI runs).
# Both set up what they need on a fresh Debian machine: a venv, a Docker engine, the sandbox image.

PYTHON ?= python3
# Python's bytecode cache, even where the environment turns it off: without it every pytest worker and every CLI
# child compiles runner/ and pytest rewrites hypothesis and schemathesis anew (measured: collection 31 s -> 19 s).
unexport PYTHONDONTWRITEBYTECODE
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test quick check venv engine image alertmanager compose browser bench clean

demo: venv engine image
	$(BIN)/agent-runner demo

# The tests that need no Docker engine spread over every core, then the Docker ones one at a time (scripts/test.sh).
test: venv engine image alertmanager compose browser check
	PYTHON=$(BIN)/python scripts/test.sh $(PYTEST_ARGS)

# Everything that needs no Docker engine (and so no image): the inner loop, spread over every core (pytest-xdist).
quick: venv alertmanager compose browser
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not docker" -n auto --durations=20 $(PYTEST_ARGS)

check: venv
	$(BIN)/ruff check runner policy tests bench
	$(BIN)/mypy

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed, found " + sys.version.split()[0]'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@$(BIN)/python -c 'import runner, policy, claude_agent_sdk' && touch $@

engine:
	@scripts/docker-engine.sh

# The self-healing end-to-end test runs the real Alertmanager; it fails rather than skips without it.
alertmanager:
	@test -x /usr/bin/prometheus-alertmanager || { test "$$(id -u)" = 0 \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
			prometheus-alertmanager; } \
		|| { echo "prometheus-alertmanager is missing: apt-get install it as root" >&2; exit 1; }

# tests/test_stack.py validates compose.yaml with `docker compose config`, or Debian's docker-compose (v1).
compose:
	@docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null || { test "$$(id -u)" = 0 \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
			docker-compose; } \
		|| { echo "docker-compose is missing: apt-get install it as root" >&2; exit 1; }

# The task page's browser test drives Debian's chromium; it fails rather than skips without it under CI.
browser:
	@scripts/browser.sh

image: venv engine
	@sandbox-image/build.sh $(BIN)/python

bench: venv engine image
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
