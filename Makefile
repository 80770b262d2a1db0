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

# The report test renders HTML in headless Chromium: install Debian's chromium where we can.
$(VENV)/.browser: $(BIN)/activate
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium could not be installed: the browser test will be skipped"
	touch $@

test: $(VENV)/.installed $(VENV)/.browser
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
