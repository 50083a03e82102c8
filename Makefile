# `make run` and `make test` work on a fresh machine: they create .venv and install what is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first and pinned: 2.13.0 is a CPU build that pip finds on this machine's disk, while an
# unpinned torch (asked for by any dependency) pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
ARGS ?=
# pytest workers (pytest-xdist): two fit this 2-core machine; TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2

.PHONY: run test setup bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

run: setup
	$(BIN)/dqt-train $(ARGS)

test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) $(ARGS)

bench: setup
	$(BIN)/dqt-bench learner && $(BIN)/dqt-bench rollout && $(BIN)/dqt-bench comm

clean:
	rm -rf $(VENV) *.egg-info
