# Two commands do all the set-up on a fresh machine:
#   make demo   # the main job on the embedded defaults
#   make test   # lint, types, and the tests (embedded Postgres, then the server on 127.0.0.1:5432)
VENV   := .venv
PY     := $(VENV)/bin/python
# The CPU wheel on the build machines; any other spec pulls gigabytes of CUDA packages.
TORCH  := torch==2.13.0
TEST_SERVER_URL ?= postgresql://127.0.0.1:5432/test

.PHONY: install demo test lint check-server bench

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[local,dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m imagend.demo

lint: install
	$(VENV)/bin/ruff check imagend tests bench
	$(VENV)/bin/mypy

test: lint
	@echo "== tests against the embedded Postgres"
	$(VENV)/bin/pytest -W error -q
	@echo "== tests against $(TEST_SERVER_URL)"
	IMAGEND_TEST_DATABASE_URL=$(TEST_SERVER_URL) $(VENV)/bin/pytest -W error -q

bench: install
	$(PY) bench/queue_drain.py
	$(PY) bench/pickup_latency.py
	$(PY) bench/claim_scale.py
