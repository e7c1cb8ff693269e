# glmtune: `make install`, `make test`, `make demo`. Everything runs from the .venv that `make install` creates.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build where there is no CUDA (a bare `torch` requirement would pull a multi-GB CUDA build); the normal build elsewhere.
TORCH_CPU ?= torch==2.13.0
# DeepSpeed compiles its C++ ops on first use (~50 s each); keep them between runs.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions

.PHONY: install test test-slow test-fuzz test-deepspeed test-gpu lint format demo bench arch clean

install:
	$(PYTHON) -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "CUDA found: installing the default torch build"; $(BIN)/pip install -q torch; \
	else \
		echo "no CUDA: installing the CPU torch build ($(TORCH_CPU))"; $(BIN)/pip install -q $(TORCH_CPU); \
	fi
	$(BIN)/pip install -q -e '.[dev,deepspeed,quant]'
	@$(BIN)/glmtune --help >/dev/null && echo "installed: $(BIN)/glmtune"

test:
	$(BIN)/python -m pytest -n 2 --dist loadfile -q

test-slow:
	$(BIN)/python -m pytest -q -m slow

test-fuzz:
	$(BIN)/python -m pytest -q -s -m fuzz tests/test_fuzz.py

test-deepspeed:
	$(BIN)/python -m pytest -q -m deepspeed

test-gpu:
	$(BIN)/python -m pytest -q -m gpu

lint:
	$(BIN)/ruff check glmtune tests
	$(BIN)/ruff format --check glmtune tests
	$(BIN)/mypy glmtune

format:
	$(BIN)/ruff format glmtune tests
	$(BIN)/ruff check --fix glmtune tests

demo:
	$(BIN)/glmtune prepare recipes/demo.toml --show 1
	$(BIN)/glmtune train recipes/demo.toml --overwrite
	$(BIN)/glmtune eval runs/demo
	$(BIN)/glmtune export runs/demo --out runs/demo-export --overwrite
	$(BIN)/glmtune chat runs/demo-export --query "你是谁？"

bench:
	$(BIN)/python -m glmtune.bench

# Import floors, arrows, circles, long modules and functions, `# fmt: skip` (tests/test_architecture.py holds the layers).
arch:
	$(BIN)/python tools/arch_report.py

clean:
	rm -rf runs .cache .pytest_cache
