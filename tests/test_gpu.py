"""The sampler on CUDA: same results as diffusers there, and no host-device sync in the step loop.

Marked ``gpu``: skipped where no CUDA device is present (CI). Run on a GPU machine with
``pytest -m gpu``.
"""

import warnings

import pytest
import torch

from asyndm.backends import ItemTokens
from asyndm.models import load_backend
from asyndm.pixel_timesteps import PixelTimestepUNet
from asyndm.sampler import AsyncSampler, SamplingSettings

pytestmark = pytest.mark.gpu

PROMPT, SEEDS, TOKENS, K = "a cat eating a sandwich", [1234, 1235], ItemTokens([[2], [5]]), [0.7, 0.5]
# A wrong timestep or coefficient moves latents by O(0.1) or more; fp32 rounding, amplified by ten
# stochastic steps, stays far below this.
TOLERANCE = dict(rtol=1e-3, atol=1e-3)


@pytest.fixture(scope="module")
def cuda_backend(tiny_path):
    return load_backend(str(tiny_path), torch.device("cuda"), torch.float32)


@pytest.fixture
def true_fp32():
    """cuDNN and cuBLAS in true fp32: TF32 rounds at 1e-3 per op, which ten steps amplify to 1e-2
    (measured on an H100: dm vs diffusers differed by up to 0.013 with TF32 convolutions)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def pipeline_latents(bundle, steps):
    generators = [torch.Generator("cuda").manual_seed(s) for s in SEEDS]
    return bundle.pipe(
        PROMPT, num_images_per_prompt=len(SEEDS), generator=generators, eta=1.0, guidance_scale=5.0,
        num_inference_steps=steps, output_type="latent",
    ).images


def test_dm_and_all_linear_asyndm_reproduce_diffusers_on_cuda(cuda_backend, true_fp32):
    sampler = AsyncSampler(cuda_backend, SamplingSettings(steps=10))
    embeddings = sampler.encode(PROMPT, len(SEEDS))
    reference = pipeline_latents(cuda_backend, 10)
    dm = sampler.sample_variant("dm", embeddings, SEEDS, TOKENS, K).latents
    background = torch.full((len(SEEDS), *cuda_backend.latent_size), -1, device="cuda")
    linear = sampler.sample_variant("asyndm", embeddings, SEEDS, TOKENS, K, masks=background).latents
    assert dm.device.type == "cuda"
    gaps = {name: float((x - reference).abs().max()) for name, x in (("dm", dm), ("linear asyndm", linear))}
    for latents in (dm, linear):
        torch.testing.assert_close(latents, reference, **TOLERANCE, msg=f"largest gaps to diffusers: {gaps}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_tabulated_time_embedding_on_cuda(tiny_path, dtype):
    bundle = load_backend(str(tiny_path), torch.device("cuda"), dtype)
    generator = torch.Generator("cuda").manual_seed(0)
    sample = torch.randn(2, 4, *bundle.latent_size, generator=generator, device="cuda", dtype=dtype)
    context = torch.randn(2, 77, bundle.unet.config.cross_attention_dim, generator=generator, device="cuda", dtype=dtype)
    timestep_map = torch.randint(0, 1000, (2, *bundle.latent_size), generator=generator, device="cuda")
    with torch.no_grad():
        fast = PixelTimestepUNet(bundle.unet, 1000)(sample, timestep_map, context).sample
        direct = PixelTimestepUNet(bundle.unet, 1000, tabulate=False)(sample, timestep_map, context).sample
    assert torch.isfinite(fast).all()
    tolerance = TOLERANCE if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(fast, direct, **tolerance)


def _sync_warnings(run) -> int:
    """Synchronising CUDA operations ``run`` performs, as torch's sync debug mode reports them."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.parametrize("variant", ["dm", "dm_concave", "asyndm"])
def test_step_loop_never_waits_for_the_device(cuda_backend, variant):
    """Twice the steps, no more syncs: whatever synchronises happens once, outside the loop."""
    assert _sync_warnings(lambda: torch.ones(1, device="cuda").item()) > 0  # the detector detects

    def sample(steps):
        sampler = AsyncSampler(cuda_backend, SamplingSettings(steps=steps))
        embeddings = sampler.encode(PROMPT, len(SEEDS))
        return lambda: sampler.sample_variant(variant, embeddings, SEEDS, TOKENS, K)

    short, long = sample(3), sample(6)
    short()  # warm-up: tables, kernels, allocator
    assert _sync_warnings(long) == _sync_warnings(short)
