# Two commands from a fresh clone: `make demo` and `make test`. Both create .venv when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench mutants clean

setup: $(STAMP)

# DeepSpeed without prebuilt ops (no CUDA toolkit needed), then its CPU ops compiled once
# (scripts/prebuild_deepspeed_ops.py), so the sharded tests do not start by compiling.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	DS_BUILD_OPS=0 $(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,deepspeed]'
	$(BIN)/python scripts/prebuild_deepspeed_ops.py
	touch $@

demo: $(STAMP)
	$(BIN)/tempsamp demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(TEST_ARGS)

# Break the algorithm core and the loop's wiring on purpose; fails if a mutation survives the tests.
mutants: $(STAMP)
	$(BIN)/python scripts/mutants.py

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .cache .pytest_cache .hypothesis
