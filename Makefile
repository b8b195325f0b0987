# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Each creates the virtual environment it needs (.venv) on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# No hub downloads at run time: the demo and the tests use models the project builds itself.
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline

.PHONY: venv demo test bench gpu-check lower-bounds clean

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

# The tests that exercise each dependency's lower bound (pyproject.toml's comments say which API sets it):
# diffusers (Flux, SD3, from_pipe), transformers (PickScore's CLIPImageProcessorPil, dtype=), wandb
# (reinit), Hydra (sweeps, its private API), the layers and the cheap commands. `make lower-bounds` builds
# .venv-lower with every dependency at exactly its lower bound (torch kept) and runs them without the slow ones.
LOWER_VENV ?= .venv-lower
LOWER_BOUND_TESTS := tests/test_layers.py tests/test_cheap_commands.py tests/test_config.py tests/test_prompts.py \
	tests/test_python_api.py tests/test_sd3.py tests/test_flux.py tests/test_ddim.py tests/test_eval_pickscore.py \
	tests/test_eval_caption_bertscore.py tests/test_eval_wandb_logger.py tests/test_sweep.py
# a multirun with a failing job: Hydra's private JobReturn._return_value and hydra._internal (slow, but the only one)
LOWER_BOUND_SWEEP := tests/test_sweep.py::test_failing_job_does_not_stop_the_sweep_or_its_summary

lower-bounds: venv
	$(BIN)/python scripts/lower_bounds.py $(LOWER_VENV)
	$(OFFLINE) $(LOWER_VENV)/bin/python -m pytest -q -p no:cacheprovider -m "not slow and not gpu" $(LOWER_BOUND_TESTS)
	$(OFFLINE) $(LOWER_VENV)/bin/python -m pytest -q -p no:cacheprovider $(LOWER_BOUND_SWEEP)

clean:
	rm -rf $(VENV) $(LOWER_VENV) outputs
