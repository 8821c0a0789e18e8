# The targets the README and CI use: a contributor types what CI runs.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned here only (the development set-up): 2.13.0 is a CPU build on this
# machine kind's disk. The package itself depends on a range; users bring their own torch.
TORCH ?= torch==2.13.0

.PHONY: install test test-fast lint check rules-check recommend clean

$(VENV)/.installed: pyproject.toml .ci/constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" -e '.[dev]' -c .ci/constraints.txt
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q

# The development loop's tier (under 2 minutes here): no engine imports, no measured torch.
# `make test` stays the whole suite, which CI runs.
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not heavy"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check advisor tests benchmarks
	$(VENV)/bin/ruff format --check advisor tests benchmarks
	$(VENV)/bin/mypy advisor
	$(VENV)/bin/lint-imports
	$(VENV)/bin/yamllint -s -c .yamllint rules profiles tests/fixtures

rules-check: $(VENV)/.installed
	$(VENV)/bin/optadvise rules check

recommend: $(VENV)/.installed
	$(VENV)/bin/optadvise recommend --model-size 7B

check: lint rules-check test

clean:
	rm -rf $(VENV) dist build .pytest_cache .mypy_cache .ruff_cache
