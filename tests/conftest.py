"""Shared fixtures: offline, one thread, and the project's own tiny SD- and SDXL-shaped models."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read once, when huggingface_hub is imported
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_path():
    from asyndm.offline.sd import build_tiny_pipeline

    return build_tiny_pipeline()


@pytest.fixture(scope="session")
def tiny_backend(tiny_path):
    from asyndm.models import load_backend

    return load_backend(str(tiny_path), torch.device("cpu"), torch.float32)


@pytest.fixture(scope="session")
def tiny_sdxl_path():
    from asyndm.offline.sdxl import build_tiny_sdxl_pipeline

    return build_tiny_sdxl_pipeline()


@pytest.fixture(scope="session")
def tiny_sdxl_backend(tiny_sdxl_path):
    from asyndm.models import load_backend

    return load_backend(str(tiny_sdxl_path), torch.device("cpu"), torch.float32)


@pytest.fixture(scope="session")
def tiny_pipe(tiny_backend, tiny_path):
    from asyndm import AsyncPipeline

    return AsyncPipeline(tiny_backend, str(tiny_path))


@pytest.fixture(scope="session")
def tiny_sd3_path():
    from asyndm.offline.sd3 import build_tiny_sd3

    return build_tiny_sd3()


@pytest.fixture(scope="session")
def tiny_sd3_backend(tiny_sd3_path):
    from asyndm.models import load_backend

    return load_backend(str(tiny_sd3_path), torch.device("cpu"), torch.float32)


@pytest.fixture(scope="session")
def tiny_flux_path():
    from asyndm.offline.flux import build_tiny_flux

    return build_tiny_flux()


@pytest.fixture(scope="session")
def tiny_flux_backend(tiny_flux_path):
    from asyndm.models import load_backend

    return load_backend(str(tiny_flux_path), torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """A fresh model cache for one test module (tiny VLM/BERT built there); loaded models dropped after."""
    from evaluation import registry, vlm

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ASYNDM_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield
    registry.clear_cache()
    vlm.clear_cache()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
