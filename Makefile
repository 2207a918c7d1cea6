# Copilot Server: `make run` serves the app, `make test` runs the whole suite (CONTRACT §1).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test install install-test migrate demo-user check lint bench chaos prod-lane vendor clean

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed: $(VENV)/bin/activate pyproject.toml constraints.txt
	$(PIP) install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install --quiet -c constraints.txt -e ".[test]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

migrate: install
	DEBUG=$${DEBUG:-true} $(PY) manage.py migrate --noinput

demo-user: migrate
	DEBUG=$${DEBUG:-true} $(PY) manage.py ensure_demo_user

# A fresh checkout gets a development .env (DEBUG=true, a generated SECRET_KEY), so manage.py
# commands such as createsuperuser work without exporting anything. Never overwritten.
.env:
	bash scripts/dev-env.sh $@

# The chat page's browser libraries (markdown-it, DOMPurify): npm ci in frontend/ at the pinned
# versions, then copy their browser builds into static/vendor/ (committed: run/test need no npm).
vendor:
	bash scripts/vendor.sh

run: .env demo-user
	@command -v bwrap >/dev/null && command -v socat >/dev/null || echo "make run: bubblewrap or socat is missing, \
	so the agent's tools run WITHOUT the jail (development only; production refuses). Install them: \
	sudo apt-get install bubblewrap socat"
	@echo "Serving on http://$(HOST):$(PORT)/"
	DEBUG=$${DEBUG:-true} $(PY) manage.py runserver --noreload $(HOST):$(PORT)

test: install-test
	bash scripts/test-prereqs.sh
	ENV_FILE= DEBUG=true $(PY) -m pytest $(PYTEST_ARGS)

# ruff (pinned in the test extras; configuration in pyproject.toml), as CI runs it.
lint: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

check: install
	DEBUG=true $(PY) manage.py makemigrations --check --dry-run
	DEBUG=true $(PY) manage.py check

# Benchmarks (issue 9, docs/performance.md): a few minutes; needs PostgreSQL + Redis on 127.0.0.1
# for the scale-out run (skipped with a note otherwise). BENCH_ARGS="--quick" for a smoke run.
bench: install-test
	$(PY) -m bench.run $(BENCH_ARGS)

# Chaos run (issue 10, docs/reliability.md): 300 randomised sessions against two daphne processes
# + PostgreSQL + Redis on 127.0.0.1 (database copilot_chaos), then the invariant checker.
# CHAOS_ARGS="--sessions 30" for a short run; skipped with a message when PG/Redis are absent.
chaos: install-test
	$(PY) -m bench.chaos $(CHAOS_ARGS)

# Production lane (docs/production.md): the runtime-only install (var/prodlane-venv), DEBUG=false,
# PostgreSQL + Redis, two daphne workers per backend, the scripted model as a remote API, driven
# by the AI SDK's own client (e2e/, Node). Needs PostgreSQL + Redis on 127.0.0.1 (.ci/run starts them).
prod-lane:
	bash scripts/prod-lane.sh

clean:
	rm -rf $(VENV) var staticfiles .pytest_cache
