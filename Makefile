# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Each creates the virtual environment it needs (.venv) on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# No hub downloads at run time: the demo and the tests use models the project builds itself.
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline

.PHONY: venv demo test bench gpu-check clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[dev,cluster,video]"
	touch $@

# The main job on the embedded default: the shipped toy model on the shapes prompts (40 prompts
# x 2 images x 3 variants), scored exactly, logged to an offline wandb run, and a report. CPU.
demo: venv
	$(OFFLINE) $(BIN)/asyndm experiment=toy_alignment sample.images_per_prompt=2 sample.batch_size=2 \
		logger=wandb run_dir=outputs/demo
	$(OFFLINE) $(BIN)/asyndm-report outputs/demo

test: venv
	$(OFFLINE) $(BIN)/python -m pytest -q

bench: venv
	$(OFFLINE) $(BIN)/python scripts/benchmark.py --model tiny --device cpu

# On a CUDA machine: the GPU tests and the figures of docs/performance.md, logs in outputs/gpu_check.
gpu-check: venv
	PYTHON=$(BIN)/python scripts/gpu_check.sh outputs/gpu_check

clean:
	rm -rf $(VENV) outputs
