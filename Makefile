# The two commands of a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo bench docs clean fuzz soak

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,demo]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

demo: $(STAMP)
	$(BIN)/python -m torchcaffe.demo

bench: $(STAMP)
	$(BIN)/python bench/nets.py
	$(BIN)/python bench/train_resnet50.py
	$(BIN)/python bench/train_lenet.py
	$(BIN)/python bench/data_pipeline.py
	$(BIN)/python bench/load_caffemodel.py

# Every fuzz target for FUZZ_SECONDS each (atheris, coverage-guided); see docs/robustness.md.
FUZZ_SECONDS ?= 30
fuzz: $(STAMP)
	$(BIN)/pip install --quiet -e '.[fuzz]'
	$(BIN)/python -m fuzz.run --seconds $(FUZZ_SECONDS)

soak: $(STAMP)
	$(BIN)/python bench/soak.py

docs: $(STAMP)
	$(BIN)/python scripts/gen_layer_table.py

clean:
	rm -rf $(VENV) build *.egg-info
