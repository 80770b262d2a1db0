# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv, installs moesim, runs the main job on the default scenario
#   make test   creates .venv, installs moesim with its test extras, runs the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build first: a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
DEFAULT_SCENARIO := scenarios/mixtral-8x7b-serving.yaml

.PHONY: demo test clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/moesim run $(DEFAULT_SCENARIO)

# The report test renders HTML in a headless Chromium where one is installed and is skipped, saying so, where none
# is: `make test` installs nothing outside the checkout and needs no root (.ci/run installs a browser for CI).
test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
