# kdist developer tasks. `make demo` and `make test` each set up .venv on their own.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXAMPLES := $(basename $(notdir $(wildcard trainers/examples/*.yaml)))

.PHONY: venv demo test lint golden examples bench clean

$(BIN)/kdist: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,train]'
	touch $@

venv: $(BIN)/kdist

demo: venv  ## run the example elastic job as 3 simulated nodes on this host
	$(BIN)/kdist run -f trainers/examples/cpu-gloo.yaml

test: venv lint  ## the whole test suite (Docker/helm tests skip with a reason when absent)
	$(BIN)/pytest -q -ra --durations=15

lint: venv
	$(BIN)/ruff check kdist tests benchmarks trainers
	$(BIN)/mypy kdist trainers/train.py trainers/smoke.py

golden: venv  ## regenerate golden files and committed manifests (review the diff!)
	$(BIN)/pytest -q tests/test_golden.py --update-golden
	$(MAKE) examples

examples: venv  ## render trainers/examples/*.yaml into manifests/<example>/
	@for ex in $(EXAMPLES); do \
	  $(BIN)/kdist render -t compose -f trainers/examples/$$ex.yaml -o manifests/$$ex && \
	  $(BIN)/kdist render -t k8s -f trainers/examples/$$ex.yaml -o manifests/$$ex && \
	  $(BIN)/kdist render -t helm-values -f trainers/examples/$$ex.yaml -o manifests/$$ex || exit 1; \
	done

bench: venv  ## benchmarks: tables on stdout, JSON under benchmarks/results/
	$(BIN)/python benchmarks/bench_render.py

clean:
	rm -rf $(VENV) .kdist .pytest_cache .mypy_cache .ruff_cache
