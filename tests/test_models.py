"""Model sources and loading: bad paths fail before anything loads, hub ids fail fast offline with
advice, and sizes come from the model's own config."""

import json
import shutil
import time

import pytest
import torch
from omegaconf import OmegaConf

from asyndm.errors import ModelError
from asyndm.models import load_backend, resolve_device, resolve_dtype
from asyndm.sources import load_tokenizer, model_source

MISSING_HUB_ID = "asyndm-tests/no-such-model"


def model_cfg(**fields):
    return OmegaConf.create({"name": "local", "builder": None, "path": None, **fields})


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if anything tries to load a pipeline or tokenizer."""
    import diffusers
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the path was checked")

    monkeypatch.setattr(diffusers.StableDiffusionPipeline, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.CLIPTokenizer, "from_pretrained", refuse)


@pytest.mark.parametrize("path", ["/nonexistent/sd-model", "./not-here", "~/not-here-either", "not a hub id"])
def test_missing_local_path_raises_before_loading(no_loading, path):
    with pytest.raises(ModelError, match=rf"model.path={path}: no such folder"):
        model_source(model_cfg(path=path))


def test_folder_without_model_index_raises(no_loading, tmp_path):
    with pytest.raises(ModelError, match=rf"model.path={tmp_path}: the folder has no model_index.json"):
        model_source(model_cfg(path=str(tmp_path)))


def test_empty_path_raises(no_loading):
    with pytest.raises(ModelError, match="model.path is empty"):
        model_source(model_cfg(path=None))


def test_sources_resolve_without_loading(no_loading, tiny_path):
    assert model_source(model_cfg(path=str(tiny_path))) == str(tiny_path)
    assert model_source(model_cfg(builder="tiny", name="tiny")) == str(tiny_path)


def test_hub_id_offline_without_cache_fails_at_the_source_check(no_loading, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match=rf"model.path={MISSING_HUB_ID}: .*HF_HUB_OFFLINE.*model.path=<dir>"):
        model_source(model_cfg(path=MISSING_HUB_ID))


@pytest.mark.parametrize("loader", ["tokenizer", "pipeline"])
def test_hub_id_offline_without_cache_fails_fast_with_advice(monkeypatch, loader):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelError) as err:
        if loader == "tokenizer":
            load_tokenizer(MISSING_HUB_ID)
        else:
            load_backend(MISSING_HUB_ID, torch.device("cpu"), torch.float32)
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert f"model.path={MISSING_HUB_ID}" in message
    assert "model.path=<dir>" in message, "the advice says how to give a local folder"


def test_tiny_model_loads_with_sizes_from_its_config(tiny_backend):
    from diffusers import DDIMScheduler

    assert tiny_backend.latent_size == (64, 64) == (tiny_backend.unet.config.sample_size,) * 2
    assert tiny_backend.vae_scale_factor == 2
    assert isinstance(tiny_backend.pipe.scheduler, DDIMScheduler)
    config = tiny_backend.pipe.scheduler.config
    assert (config.num_train_timesteps, config.steps_offset, config.set_alpha_to_one) == (1000, 1, False)
    assert tiny_backend.unet.dtype == torch.float32 and tiny_backend.device == torch.device("cpu")
    assert len(tiny_backend.tokenizer) == 49408


def test_latent_size_is_read_from_the_unet_config(tiny_path, tmp_path):
    copy = tmp_path / "tiny-32"
    shutil.copytree(tiny_path, copy)
    config_file = copy / "unet" / "config.json"
    config = json.loads(config_file.read_text())
    config["sample_size"] = 32
    config_file.write_text(json.dumps(config))
    backend = load_backend(model_source(model_cfg(path=str(copy))), torch.device("cpu"), torch.float32)
    assert backend.latent_size == (32, 32) and backend.default_size == (64, 64)


def test_device_and_precision_errors_name_the_setting():
    assert resolve_dtype("bf16") == torch.bfloat16
    with pytest.raises(ModelError, match="precision=fp8"):
        resolve_dtype("fp8")
    with pytest.raises(ModelError, match="device=tpu"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="device=cuda: CUDA is not available"):
            resolve_device("cuda")
