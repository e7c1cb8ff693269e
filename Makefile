# glmtune: `make install`, `make test`, `make demo`. Everything runs from the .venv that `make install` creates.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The exact versions CI tested (a `pip freeze` of a fresh install, glmtune itself left out); `make lock` moves them.
CONSTRAINTS ?= constraints.txt
# The newest releases of every dependency, for `make test-latest` and `make lock`.
LATEST ?= .venv-latest
# CPU build where there is no CUDA (a bare `torch` requirement would pull a multi-GB CUDA build); the normal build
# elsewhere. No local tag (+cpu) here or in the lock: a CUDA machine must still get its CUDA build of the same version.
TORCH_CPU ?= torch==2.13.0
# DeepSpeed compiles its C++ ops on first use (~50 s each); keep them between runs.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions

# $(1): the venv folder; $(2): pip options (the lock, or nothing for the newest releases)
define install_into
	$(PYTHON) -m venv $(1)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "CUDA found: installing the default torch build"; $(1)/bin/pip install -q $(2) torch; \
	else \
		echo "no CUDA: installing the CPU torch build ($(TORCH_CPU))"; $(1)/bin/pip install -q $(2) '$(TORCH_CPU)'; \
	fi
	$(1)/bin/pip install -q $(2) -e '.[dev,deepspeed,quant,serve,web,trackers]'
	@$(1)/bin/glmtune --help >/dev/null && echo "installed: $(1)/bin/glmtune"
endef

.PHONY: install test test-latest lock test-slow test-fuzz test-deepspeed test-browser test-gpu lint format demo bench arch clean

install:
	$(call install_into,$(VENV),-c $(CONSTRAINTS))

# A fresh venv of the newest releases (no lock; on CPU the newest CPU torch build), then the default tier.
test-latest:
	rm -rf $(LATEST)
	$(call install_into,$(LATEST),)
	$(LATEST)/bin/python -m pytest -n 2 --dist loadfile -q

# Move the lock forward: the newest releases, once they pass the default tier, become the exact versions installed.
lock: test-latest
	@echo "# Exact versions \`make install\` installs (\`pip install -c\`); written by \`make lock\` from a fresh venv of" > $(CONSTRAINTS)
	@echo "# the newest releases that passed \`make test-latest\` ($$($(LATEST)/bin/python -V), $$(date -u +%F)). Do not edit by hand." >> $(CONSTRAINTS)
	$(LATEST)/bin/pip freeze --exclude-editable | sed -E 's/^(torch==[^+]+)\+.*/\1/' >> $(CONSTRAINTS)
	@echo "wrote $(CONSTRAINTS): $$(grep -vc '^#' $(CONSTRAINTS)) pinned packages"

test:
	$(BIN)/python -m pytest -n 2 --dist loadfile -q

test-slow:
	$(BIN)/python -m pytest -q -m slow

test-fuzz:
	$(BIN)/python -m pytest -q -s -m fuzz tests/test_fuzz.py

test-deepspeed:
	$(BIN)/python -m pytest -q -m deepspeed

# glmtune web in a real browser: Debian's Chromium (apt-get install -y chromium), driven by playwright.
test-browser:
	$(BIN)/python -m pytest -q -m browser

test-gpu:
	$(BIN)/python -m pytest -q -m gpu  # skips cleanly without CUDA; "no tests collected" (exit 5) is a failure

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
	@echo "try it from an OpenAI client: $(BIN)/glmtune serve runs/demo-export   (http://127.0.0.1:8000/v1)"
	@echo "or in a browser:              $(BIN)/glmtune web runs/demo --base --data data/labelled.jsonl"

bench:
	$(BIN)/python -m glmtune.bench

# Import floors, arrows, circles, long modules and functions, `# fmt: skip` (tests/test_architecture.py holds the layers).
arch:
	$(BIN)/python tools/arch_report.py

clean:
	rm -rf runs .cache .pytest_cache $(LATEST)
