# The two commands of the README: `make demo` and `make test`. Both build .venv from nothing.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PYTHON  ?= python3

.PHONY: demo test lint typecheck pytest setup bench clean constraints

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/setup-system.sh
	PYTHON=$(PYTHON) bash scripts/setup-system.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned, so that nothing pulls the multi-GB CUDA build from the index
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,frida,heic,fast,cluster]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/replaybench demo -o demo-out

lint: $(STAMP)
	$(VENV)/bin/ruff check replaybench tests benchmarks scripts
	$(VENV)/bin/ruff format --check replaybench tests benchmarks scripts

typecheck: $(STAMP)
	$(VENV)/bin/mypy replaybench

pytest: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup -q

test: lint typecheck pytest

bench: $(STAMP)
	$(PY) benchmarks/scan_bench.py
	$(PY) benchmarks/replay_bench.py
	$(PY) benchmarks/student_bench.py
	$(PY) benchmarks/native_bench.py

# Refresh the exact tested set after changing dependencies.
constraints: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | grep -v '^-e' > constraints.txt

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache
