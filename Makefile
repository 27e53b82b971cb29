# The two commands: `make run` and `make test`. Both set everything up first.
# And any management command in development: make manage ARGS="export_form booking -o booking.json"
PYTHON_VERSION := $(shell cat .python-version)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test soak bench install browser wrk migrate demo manage clean

# Find a Python 3.12+: pyenv's, then python3.13 / python3.12 on PATH.
$(PY):
	@py=""; \
	for candidate in "$$(pyenv root 2>/dev/null)/versions/$(PYTHON_VERSION)/bin/python" \
	                 "$$HOME/.pyenv/versions/$(PYTHON_VERSION)/bin/python" \
	                 python3.13 python3.12 python3; do \
	  if command -v "$$candidate" >/dev/null 2>&1 && "$$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then \
	    py="$$candidate"; break; fi; \
	done; \
	if [ -z "$$py" ]; then echo "Python 3.12 or newer is needed (Django 6 refuses older ones)." >&2; exit 1; fi; \
	echo "Creating $(VENV) with $$py"; "$$py" -m venv $(VENV)

$(STAMP): $(PY) requirements.txt requirements-dev.txt
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

# Debian's chromium for the browser tests (Playwright's own browser download does not work here).
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "Installing Debian's chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "chromium is missing: install Debian's chromium package (sudo apt-get install chromium)." >&2; exit 1; fi

# Debian's wrk, the load generator of the benchmarks (make bench, and make test's short run of them).
wrk:
	@if command -v wrk >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "Installing Debian's wrk for the benchmarks"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; \
	else echo "wrk is missing: install Debian's wrk package (sudo apt-get install wrk)." >&2; exit 1; fi

migrate: install
	DJANGO_DEBUG=1 $(PY) manage.py migrate --noinput

# The demo's addresses are those `make run` serves (EVENTS_PUBLIC_URL, as scripts/run.sh sets it).
# Under `make run` it leaves out its "open these, start with make run" lines: run.sh prints them.
demo: migrate
	DJANGO_DEBUG=1 EVENTS_PUBLIC_URL=$${EVENTS_PUBLIC_URL:-http://$(HOST):$(PORT)} $(PY) manage.py demo $(DEMO_ARGS)

run: DEMO_ARGS = --no-next-steps
run: demo
	@DJANGO_DEBUG=1 HOST=$(HOST) PORT=$(PORT) PY=$(PY) bash scripts/run.sh

# Any management command with the project's Python, in development mode (DJANGO_DEBUG=1 unless set):
#   make manage ARGS="export_form booking -o booking.json"
# Installing (when needed) reports on standard error, so standard output is the command's alone.
manage:
	@$(MAKE) --no-print-directory -s install >&2
	@DJANGO_DEBUG=$${DJANGO_DEBUG:-1} $(PY) manage.py $(ARGS)

# The lint (ruff, configured in pyproject.toml); the whole suite on SQLite; and again on PostgreSQL
# when TEST_DATABASE_URL is set (pytest-django creates and drops test_<name>_gwN databases there).
# Then the fault tests (short version), one at a time, with their counts printed.
test: install browser wrk
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -n 2 --dist loadgroup -m "not faults" $(PYTEST_ARGS)
	@if [ -n "$$TEST_DATABASE_URL" ]; then \
	  echo "== The whole suite again, on PostgreSQL ($$TEST_DATABASE_URL)"; \
	  DATABASE_URL="$$TEST_DATABASE_URL" $(PY) -m pytest -n 2 --dist loadgroup -m "not faults" $(PYTEST_ARGS); \
	fi
	@if [ -z "$(PYTEST_ARGS)" ]; then \
	  echo "== Fault tests (short)"; $(PY) -m pytest -s -m faults tests/faults; \
	fi

# The long fault tests: bigger counts, longer runs.
soak: install
	FAULTS_SCALE=long $(PY) -m pytest -s -m faults tests/faults

# The benchmarks (DESIGN.md section 13, README "Performance"): our app against the reference app in
# bench/reference, side by side, on SQLite; again on PostgreSQL when BENCH_DATABASE_URL is set (a server
# URL such as postgres://postgres@127.0.0.1:5432/postgres: it creates and drops bench_* databases there).
# At most 10 minutes each; raw results in bench/results/latest-<db>.json.
bench: install wrk
	@status=0; $(PY) bench/run.py --sqlite || status=1; \
	if [ -n "$$BENCH_DATABASE_URL" ]; then \
	  echo "== The benchmarks again, on PostgreSQL ($$BENCH_DATABASE_URL)"; \
	  $(PY) bench/run.py --database-url "$$BENCH_DATABASE_URL" || status=1; \
	fi; exit $$status

clean:
	rm -rf $(VENV) db.sqlite3 db.sqlite3-wal db.sqlite3-shm staticfiles
