# The two commands of the README:  `make demo`  and  `make test`.
# TORCH pins the CPU wheel that lies on these machines' disk; on a GPU box use `make setup TORCH=torch`.
VENV  ?= .venv
PY    := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: setup demo test test-fast lint format report clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(VENV)/bin/snakemake --cores all
	@echo "report: results/default/report.html (study: results/default/figures/weighting_study.md)"

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks workflow/scripts
	$(VENV)/bin/ruff format --check src tests benchmarks workflow/scripts

# the whole suite, end-to-end runs of the workflow included (pytest -m slow)
test: lint
	$(VENV)/bin/pytest -q

# everything but the tests marked slow (end-to-end runs): for the edit-test loop
test-fast: lint
	$(VENV)/bin/pytest -q -m "not slow"

format: setup
	$(VENV)/bin/ruff format src tests benchmarks workflow/scripts
	$(VENV)/bin/ruff check --fix src tests benchmarks workflow/scripts

clean:
	rm -rf results .snakemake
