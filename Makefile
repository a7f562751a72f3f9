# Two entry points on a fresh machine: `make demo` and `make test` (see README).
# torch is installed first and pinned, so that no multi-GB CUDA build is pulled in.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0
OUT ?= scoresde-out

.PHONY: demo test test-fast test-bench docs install clean

$(VENV)/.installed: pyproject.toml package-lock.json
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e ".[dev]"
	# the docs' math renderer, pinned (package-lock.json), served by the site itself (scripts/mkdocs_hooks.py)
	npm ci --no-audit --no-fund --silent
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m scoresde demo --out $(OUT) --force

# the default tier (a fast version of every check), then the slow tier (full matrices, order studies, all notebooks,
# the demo, the benchmarks' smoke runs), so that nothing rots; `make test-fast` runs the default tier alone, `make
# test-bench` the heaviest benchmark smoke runs (20-30 s each) and the CLI under torchrun, which CI leaves out to stay
# within 10 minutes
test: test-fast
	$(PY) -m pytest -q -n 2 -m "slow and not bench" --durations=15

test-bench: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 -m bench

test-fast: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q -n 2

docs: $(VENV)/.installed
	$(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) $(OUT) node_modules
