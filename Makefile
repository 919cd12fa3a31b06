# make demo: venv + everything installed + a small real-audio demo set + every stage on CPU.
# make test: the test suite.
# make docs: the documentation site, built strictly into site/.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo_data
DEMO_WORKDIR ?= runs/demo

.PHONY: venv test test-all demo lint docs clean-demo

$(BIN)/audiotokens: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first, so the torch requirement below is already met (no multi-GB CUDA download)
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

venv: $(BIN)/audiotokens

test: venv
	$(BIN)/python -m pytest -q

test-all: venv
	$(BIN)/python -m pytest -q -m ''

lint: venv
	$(BIN)/ruff check audiotokens tests scripts

# the docs extra stays out of the dev extra, so test installs stay lean
$(BIN)/mkdocs: $(BIN)/audiotokens
	$(BIN)/pip install -q -c constraints.txt -e '.[docs]'
	touch $@

docs: $(BIN)/mkdocs
	$(BIN)/python scripts/config_reference.py --check
	$(BIN)/mkdocs build --strict

demo: venv
	PATH=$(abspath $(BIN)):$$PATH bash scripts/demo.sh $(DEMO_DIR) $(DEMO_WORKDIR)

clean-demo:
	rm -rf $(DEMO_WORKDIR) $(DEMO_WORKDIR)-frames $(DEMO_WORKDIR)-cnn
