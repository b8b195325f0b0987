"""SD3 and Flux on CUDA: dm and an all-linear asyndm equal the diffusers pipelines there, and the
step loop never synchronises with the device, the per-token calls included (docs/mmdit.md, "Cost").

Marked ``gpu``: skipped where no CUDA device is present (CI). Run on a GPU machine with
``pytest -m gpu``. Written without a GPU at hand (the session that wrote them had none).
"""

import pytest
import torch

from asyndm.models import load_backend
from asyndm.sampler import AsyncSampler, SamplingSettings
from tests.test_gpu import TOLERANCE, _sync_warnings, true_fp32  # noqa: F401 - fixture

pytestmark = pytest.mark.gpu

PROMPT, SEEDS, ITEMS, K = "a cat eating a sandwich", [1234, 1235], ["cat", "sandwich"], [0.7, 0.5]
FAMILIES = {"sd3": dict(guidance_scale=5.0), "flux": dict(guidance_scale=3.5, height=256, width=256)}


@pytest.fixture(scope="module", params=["sd3", "flux"])
def family(request, tiny_sd3_path, tiny_flux_path):
    path = tiny_sd3_path if request.param == "sd3" else tiny_flux_path
    return request.param, load_backend(str(path), torch.device("cuda"), torch.float32)


def _pipeline_latents(name, backend, steps):
    generators = [torch.Generator("cuda").manual_seed(s) for s in SEEDS]
    settings = FAMILIES[name]
    out = backend.pipe(PROMPT, num_images_per_prompt=len(SEEDS), generator=generators, num_inference_steps=steps,
                       output_type="latent", **settings).images
    if name == "flux":
        out = backend.pipe._unpack_latents(out, settings["height"], settings["width"], backend.vae_scale_factor)
    return out


def test_dm_and_all_linear_asyndm_reproduce_diffusers_on_cuda(family, true_fp32):  # noqa: F811
    name, backend = family
    sampler = AsyncSampler(backend, SamplingSettings(steps=6, **FAMILIES[name]))
    tokens = backend.item_tokens(PROMPT, ITEMS, None, "word")
    cond = sampler.encode(PROMPT, len(SEEDS))
    reference = _pipeline_latents(name, backend, 6)
    dm = sampler.sample_variant("dm", cond, SEEDS, tokens, K).latents
    grid = backend.map_shape(dm)
    background = torch.full((len(SEEDS), *grid), -1, device="cuda")
    linear = sampler.sample_variant("asyndm", cond, SEEDS, tokens, K, masks=background).latents
    for latents in (dm, linear):
        torch.testing.assert_close(latents, reference, **TOLERANCE)


@pytest.mark.parametrize("variant", ["dm", "dm_concave", "asyndm"])
def test_step_loop_never_waits_for_the_device(family, variant):
    """Twice the steps, no more synchronising calls, and every per-token call's distinct timesteps
    were announced a call ahead (read from a copy that had finished, not waited for)."""
    name, backend = family
    tokens = backend.item_tokens(PROMPT, ITEMS, None, "word")

    def sample(steps):
        sampler = AsyncSampler(backend, SamplingSettings(steps=steps, **FAMILIES[name]))
        cond = sampler.encode(PROMPT, len(SEEDS))
        return lambda: sampler.sample_variant(variant, cond, SEEDS, tokens, K)

    short, long = sample(3), sample(6)
    short()
    before = backend.unannounced_calls
    extra = _sync_warnings(long) - _sync_warnings(short)
    assert extra == 0
    assert backend.unannounced_calls == before
