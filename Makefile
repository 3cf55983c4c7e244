# The two commands of a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo bench docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

demo: $(STAMP)
	$(BIN)/python -m torchcaffe.demo

bench: $(STAMP)
	$(BIN)/python bench/load_caffemodel.py

docs: $(STAMP)
	$(BIN)/python scripts/gen_layer_table.py

clean:
	rm -rf $(VENV) build *.egg-info
