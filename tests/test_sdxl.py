"""SDXL (METHOD.md §9) on ``model=tiny_sdxl``: dm and an all-linear asyndm equal diffusers'
``StableDiffusionXLPipeline`` with DDIM; the per-pixel UNet with SDXL's added conditioning equals the
scalar UNet and the straightforward per-pixel embedding; masks come from the layers at latent/4;
prompts, loading, decoding, and the issue's done-when command on a saved SDXL folder."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from asyndm import pixel_timesteps
from asyndm.attention import capture_layer_names
from asyndm.backends import StableDiffusionXLBackend
from asyndm.backends.base import ItemTokens
from asyndm.conditioning import TextConditioning
from asyndm.backends.sdxl import _item_tokens
from asyndm.callbacks import RecordItemMaps, RecordTimesteps
from asyndm.errors import ModelError, PromptError
from asyndm.models import load_backend
from asyndm.sources import backend_class
from asyndm.offline.sdxl import sdxl_base_unet
from asyndm.pixel_timesteps import PixelTimestepUNet
from asyndm.sampler import AsyncSampler, SamplingSettings

ROOT = Path(__file__).resolve().parent.parent
PROMPT, ITEMS, SEEDS, K = "a cat eating a sandwich", ["cat", "sandwich"], [1234, 1235], [0.7, 0.5]
# fp32 on the CPU: observed gaps to diffusers are 0 (same kernels in the same order); a wrong
# conditioning or timestep moves these latents (|x| up to ~50) by far more than 1e-4.
EXACT = dict(rtol=1e-5, atol=1e-4)


@pytest.fixture(scope="module")
def reference_pipe(tiny_sdxl_path):
    """diffusers' own StableDiffusionXLPipeline from the folder, DDIM from the folder's scheduler config."""
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_path)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_latents(pipe, steps, eta, guidance, negative_prompt=None, seeds=SEEDS):
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    return pipe(PROMPT, negative_prompt=negative_prompt, num_images_per_prompt=len(seeds), generator=generators,
                eta=eta, guidance_scale=guidance, num_inference_steps=steps, output_type="latent").images


def sample(backend, variant, steps=10, masks=None, callbacks=(), **settings):
    sampler = AsyncSampler(backend, SamplingSettings(steps=steps, **settings))
    tokens = backend.item_tokens(PROMPT, ITEMS, None, "word")
    return sampler.sample_variant(variant, sampler.encode(PROMPT, len(SEEDS)), SEEDS, tokens, K, masks, callbacks)


# ---------------------------------------------------------------------------- loading


def test_tiny_sdxl_loads_as_the_sdxl_family_with_sizes_from_its_config(tiny_sdxl_backend):
    backend = tiny_sdxl_backend
    assert type(backend) is StableDiffusionXLBackend
    unet, vae = backend.unet, backend.pipe.vae
    assert unet.config.addition_embed_type == "text_time" and vae.config.force_upcast
    assert backend.latent_size == (unet.config.sample_size,) * 2
    assert backend.vae_scale_factor == 2 ** (len(vae.config.block_out_channels) - 1)
    assert backend.default_size == tuple(s * backend.vae_scale_factor for s in backend.latent_size)
    assert type(backend.pipe.scheduler).__name__ == "DDIMScheduler"
    assert len(backend.pipe.tokenizer) == len(backend.pipe.tokenizer_2) == 49408
    assert backend.pipe.tokenizer_2.pad_token == "!"  # SDXL's second tokenizer pads differently


@pytest.mark.parametrize("name,reason", [("StableDiffusionXLImg2ImgPipeline", "refiner"),
                                         ("StableDiffusionXLInpaintPipeline", "inpainting")])
def test_refiner_and_inpainting_folders_are_refused_before_loading(tmp_path, monkeypatch, name, reason):
    import diffusers

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the folder's family was checked")

    monkeypatch.setattr(diffusers.StableDiffusionXLPipeline, "from_pretrained", refuse)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": name}))
    for load in (backend_class, lambda source: load_backend(source, torch.device("cpu"), torch.float32)):
        with pytest.raises(ModelError, match=f"{name} is an SDXL {reason}.*text-to-image only"):
            load(str(tmp_path))


def test_the_family_comes_from_model_index(tiny_sdxl_path):
    assert backend_class(str(tiny_sdxl_path)) is StableDiffusionXLBackend


# ---------------------------------------------------------------------------- equivalence with diffusers


@pytest.mark.parametrize("eta,guidance,negative,steps", [(1.0, 5.0, "", 10), (0.0, 1.0, "", 5),
                                                         (1.0, 5.0, "blurry, low quality", 5)])
def test_dm_reproduces_diffusers_sdxl_pipeline(tiny_sdxl_backend, reference_pipe, eta, guidance, negative, steps):
    """Same generators, guidance, η; the empty negative prompt is the pipeline's default (None)."""
    ours = sample(tiny_sdxl_backend, "dm", steps, eta=eta, guidance_scale=guidance, negative_prompt=negative).latents
    reference = reference_latents(reference_pipe, steps, eta, guidance, negative or None)
    torch.testing.assert_close(ours, reference, **EXACT)
    if negative:  # the negative prompt matters, so the comparison above could fail
        assert (ours - reference_latents(reference_pipe, steps, eta, guidance)).abs().max() > 1e-2


def test_all_linear_asyndm_reproduces_the_pipeline(tiny_sdxl_backend, reference_pipe):
    """Per-pixel UNet with per-sample added conditioning + per-pixel step on the linear curve == DDIM."""
    recorder = RecordTimesteps()
    background = torch.full((len(SEEDS), *tiny_sdxl_backend.latent_size), -1)
    result = sample(tiny_sdxl_backend, "asyndm", masks=background, callbacks=[recorder])
    assert [int(m.unique()) for m in recorder.maps["asyndm"]] == list(range(901, 0, -100))
    torch.testing.assert_close(result.latents, reference_latents(reference_pipe, 10, 1.0, 5.0), **EXACT)


def test_empty_negative_prompt_gives_zeros_and_a_given_one_is_encoded(tiny_sdxl_backend, reference_pipe):
    assert reference_pipe.config.force_zeros_for_empty_prompt
    default = tiny_sdxl_backend.encode(PROMPT, 2, "", True).negative.tensors
    assert all(not t.any() for t in default.values())
    given = tiny_sdxl_backend.encode(PROMPT, 2, "blurry", True)
    expected = reference_pipe.encode_prompt(PROMPT, device="cpu", num_images_per_prompt=2,
                                            do_classifier_free_guidance=True, negative_prompt="blurry")
    assert torch.equal(given.positive.tensors["encoder_hidden_states"], expected[0])
    assert torch.equal(given.negative.tensors["encoder_hidden_states"], expected[1])
    assert torch.equal(given.positive.tensors["text_embeds"], expected[2])
    assert torch.equal(given.negative.tensors["text_embeds"], expected[3])
    assert given.negative.tensors["text_embeds"].abs().sum() > 0


# ---------------------------------------------------------------------------- per-pixel timesteps (§5, §9)


@pytest.fixture(scope="module")
def unet_inputs(tiny_sdxl_backend):
    """Two samples with different context, pooled text and size ids (as guidance's two halves differ)."""
    g = torch.Generator().manual_seed(0)
    unet = tiny_sdxl_backend.unet
    h, w = tiny_sdxl_backend.latent_size
    sample_ = torch.randn(2, unet.config.in_channels, h, w, generator=g)
    context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    pooled = torch.randn(2, tiny_sdxl_backend.pipe.text_encoder_2.config.projection_dim, generator=g)
    ids = torch.tensor([[64.0, 64, 0, 0, 64, 64], [128, 96, 8, 4, 64, 64]])
    return sample_, context, {"text_embeds": pooled, "time_ids": ids}


@torch.no_grad()
def test_constant_map_equals_the_scalar_unet_with_added_conditioning(tiny_sdxl_backend, unet_inputs):
    sample_, context, added = unet_inputs
    unet = tiny_sdxl_backend.unet
    pixel_unet = PixelTimestepUNet(unet, 1000)
    plain = {t: unet(sample_, t, encoder_hidden_states=context, added_cond_kwargs=added).sample for t in (100, 900)}
    for t, reference in plain.items():
        out = pixel_unet(sample_, torch.full((2, *sample_.shape[2:]), t), context, added_cond_kwargs=added).sample
        torch.testing.assert_close(out, reference, rtol=1e-5, atol=2e-5)
    assert (plain[100] - plain[900]).abs().max() > 1e-2, "the timestep must matter"
    swapped = {"text_embeds": added["text_embeds"].flip(0), "time_ids": added["time_ids"]}
    other = pixel_unet(sample_, torch.full((2, *sample_.shape[2:]), 100), context, added_cond_kwargs=swapped).sample
    assert (other - plain[100]).abs().max() > 1e-2, "the added conditioning must matter"


@torch.no_grad()
def test_each_sample_keeps_its_own_timestep_and_conditioning(tiny_sdxl_backend, unet_inputs):
    """Sample 0 all at 900, sample 1 all at 100 == diffusers' per-sample timesteps tensor([900, 100])."""
    sample_, context, added = unet_inputs
    pixel_map = torch.full((2, *sample_.shape[2:]), 900)
    pixel_map[1] = 100
    out = PixelTimestepUNet(tiny_sdxl_backend.unet, 1000)(sample_, pixel_map, context, added_cond_kwargs=added).sample
    reference = tiny_sdxl_backend.unet(sample_, torch.tensor([900, 100]), encoder_hidden_states=context,
                                       added_cond_kwargs=added).sample
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=2e-5)


@torch.no_grad()
def test_tabulated_embedding_equals_the_straightforward_per_pixel_embedding(tiny_sdxl_backend, unet_inputs):
    """Gathering (sample, timestep) tables == time_embedding(t_pixel) + the sample's embedding, per pixel."""
    sample_, context, added = unet_inputs
    unet = tiny_sdxl_backend.unet
    timestep_map = torch.randint(0, 1000, (2, *sample_.shape[2:]), generator=torch.Generator().manual_seed(1))
    fast = PixelTimestepUNet(unet, 1000)(sample_, timestep_map, context, added_cond_kwargs=added).sample
    direct = PixelTimestepUNet(unet, 1000, tabulate=False)(sample_, timestep_map, context, added_cond_kwargs=added)
    torch.testing.assert_close(fast, direct.sample, rtol=1e-5, atol=1e-5)
    assert all(not getattr(m, kind) for m in unet.modules() for kind in ("_forward_hooks", "_forward_pre_hooks"))


def test_per_sample_tables_are_built_once_per_batch_and_freed_with_it(tiny_sdxl_backend, monkeypatch):
    """Guidance stacks [negative; positive] every step; the stack, and so the tables, stay the same."""
    calls = []
    original = pixel_timesteps.block_projections
    monkeypatch.setattr(pixel_timesteps, "block_projections", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    sample(tiny_sdxl_backend, "asyndm", steps=4)
    assert len(calls) == 1
    assert tiny_sdxl_backend.pixel_unet._sample_tables is None, "freed with the batch's conditioning"
    negative, positive = TextConditioning({"x": torch.zeros(1)}), TextConditioning({"x": torch.ones(1)})
    assert TextConditioning.cat([negative, positive]) is TextConditioning.cat([negative, positive])
    assert TextConditioning.cat([positive, negative]).tensors["x"].tolist() == [1.0, 0.0]


# ---------------------------------------------------------------------------- masks (§6, §9)


def measured_query_sides(unet, sample_, context, added):
    """Processor name → side of its query grid, measured from each attn2 input's sequence length."""
    sides, handles = {}, []
    for name, module in unet.named_modules():
        if name.endswith("attn2"):
            def pre_hook(module, args, kwargs, name=name):
                hidden = args[0] if args else kwargs["hidden_states"]
                sides[f"{name}.processor"] = int(round(hidden.shape[1] ** 0.5))

            handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
    try:
        with torch.no_grad():
            unet(sample_, 500, encoder_hidden_states=context, added_cond_kwargs=added)
    finally:
        for handle in handles:
            handle.remove()
    return sides


def test_masks_read_every_cross_attention_layer_at_latent_over_4(tiny_sdxl_backend, unet_inputs):
    backend = tiny_sdxl_backend
    sides = measured_query_sides(backend.unet, *unet_inputs)
    latent = torch.zeros(2, 4, *backend.latent_size)
    attention = backend.item_attention(ItemTokens([[2], [5]]), latent, None)
    side = backend.latent_size[0] // 4
    assert attention.grid == (side, side)
    assert sorted(attention.layers) == sorted(name for name, s in sides.items() if s == side)
    # SDXL's layout: the last down block, the mid block and the first up block, every transformer layer
    config = backend.unet.config
    per_block = config.transformer_layers_per_block[-1]
    expected = {"down_blocks.2": config.layers_per_block * per_block, "mid_block": per_block,
                "up_blocks.0": (config.layers_per_block + 1) * per_block}
    assert {p: sum(n.startswith(p + ".") for n in attention.layers) for p in expected} == expected
    assert len(attention.layers) == sum(expected.values())


def test_sdxl_base_architecture_has_sixty_mask_layers_at_32():
    with torch.device("meta"):  # the real 2.6 B-parameter layout, no memory
        unet = sdxl_base_unet()
    names = capture_layer_names(unet, unet.config.sample_size, unet.config.sample_size // 4)
    assert {p: sum(n.startswith(p + ".") for n in names) for p in ("down_blocks.2", "mid_block", "up_blocks.0")} == {
        "down_blocks.2": 20, "mid_block": 10, "up_blocks.0": 30}
    assert len(names) == 60


def test_item_maps_have_the_mask_grid_and_mask_resolution_is_honoured(tiny_sdxl_backend):
    side = tiny_sdxl_backend.latent_size[0] // 4
    for resolution, grid in ((None, side), (2 * side, 2 * side)):
        recorder = RecordItemMaps()
        sample(tiny_sdxl_backend, "dm", steps=2, callbacks=[recorder], mask_resolution=resolution)
        assert recorder.grid == (grid, grid)
        assert recorder.maps["dm"][0].shape == (len(SEEDS), len(ITEMS), grid * grid)
        torch.testing.assert_close(recorder.maps["dm"][0].sum(-1) / grid**2,
                                   recorder.maps["dm"][0].mean(-1))  # finite, one map per item
    with pytest.raises(ValueError, match=rf"mask.resolution=3: .*choose one of \[{side}, {2 * side}\]"):
        sample(tiny_sdxl_backend, "asyndm", steps=2, mask_resolution=3)


@pytest.mark.parametrize("mask_mode", ["dynamic", "static"])
def test_dynamic_and_static_masks_run(tiny_sdxl_backend, mask_mode):
    sampler = AsyncSampler(tiny_sdxl_backend, SamplingSettings(steps=4, mask_mode=mask_mode))
    tokens = tiny_sdxl_backend.item_tokens(PROMPT, ITEMS, None, "word")
    results = sampler.sample(PROMPT, tokens, K, SEEDS, ["dm", "asyndm"])
    assignment = results["asyndm"].assignment
    assert assignment.shape == (len(SEEDS), *tiny_sdxl_backend.latent_size)
    assert (assignment >= 0).any() and (assignment < 0).any(), "items and background"
    assert torch.isfinite(results["asyndm"].latents).all()
    assert not torch.allclose(results["asyndm"].latents, results["dm"].latents)


# ---------------------------------------------------------------------------- prompts


def test_items_resolve_with_both_tokenizers_before_any_weights_load(tiny_sdxl_backend, tiny_sdxl_path):
    resolve = StableDiffusionXLBackend.item_resolver(str(tiny_sdxl_path))
    assert resolve(PROMPT, ITEMS, None, "word") == tiny_sdxl_backend.item_tokens(PROMPT, ITEMS, None, "word")
    assert resolve(PROMPT, ITEMS, None, "word").positions == [[2], [5]]
    assert resolve(PROMPT, ITEMS, [1, 4], "legacy").positions == [[2], [5]]
    with pytest.raises(PromptError, match="item 'dog'"):
        resolve(PROMPT, ["dog"], None, "word")


class ShiftedTokenizer:
    """A tokenizer whose prompts gain one token after the start token (so items sit one later)."""

    def __init__(self, inner):
        self.inner, self.model_max_length = inner, inner.model_max_length

    def __call__(self, text, add_special_tokens=True, **kwargs):
        out = self.inner(text, add_special_tokens=add_special_tokens, **kwargs)
        if add_special_tokens:
            out["input_ids"] = out["input_ids"][:1] + [320] + out["input_ids"][1:]
        return out


def test_tokenizers_that_place_items_differently_are_refused(tiny_sdxl_backend):
    tokenizer = tiny_sdxl_backend.pipe.tokenizer
    with pytest.raises(PromptError, match=r"\[\[2\], \[5\]\] for the first tokenizer but \[\[3\], \[6\]\]"):
        _item_tokens([tokenizer, ShiftedTokenizer(tokenizer)], PROMPT, ITEMS, None, "word")


# ---------------------------------------------------------------------------- decoding


@torch.no_grad()
def test_fp16_vae_decodes_in_fp32_as_the_pipeline_does(tiny_sdxl_backend, monkeypatch):
    """force_upcast: an fp16 VAE decodes in fp32 (its fp16 weights upcast) and is fp16 again after."""
    vae16 = copy.deepcopy(tiny_sdxl_backend.pipe.vae).half()
    upcast_reference = copy.deepcopy(vae16).float()
    latents = torch.randn(1, 4, *tiny_sdxl_backend.latent_size, generator=torch.Generator().manual_seed(3))
    monkeypatch.setattr(tiny_sdxl_backend.pipe, "vae", vae16)
    images = tiny_sdxl_backend.decode(latents.half())
    assert vae16.dtype == torch.float16
    monkeypatch.setattr(tiny_sdxl_backend.pipe, "vae", upcast_reference)
    assert np.array_equal(np.asarray(images[0]), np.asarray(tiny_sdxl_backend.decode(latents.half())[0]))


# ---------------------------------------------------------------------------- the done-when command


def test_cli_on_a_saved_sdxl_folder_writes_paired_images_and_dm_latents_equal_diffusers(
        tiny_sdxl_path, reference_pipe, tmp_path):
    """``asyndm model=local model.path=<SDXL folder> ... variants=[dm,asyndm] save.latents=true``."""
    run_dir = tmp_path / "run"
    steps, images = 5, 2
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    args = ["model=local", f"model.path={tiny_sdxl_path}", f"prompt={PROMPT}", "items=[cat,sandwich]", "k=[0.7,0.7]",
            "variants=[dm,asyndm]", "save.latents=true", f"sample.steps={steps}",
            f"sample.images_per_prompt={images}", "sample.batch_size=2", "device=cpu", "precision=fp32",
            "progress=false", f"run_dir={run_dir}"]
    proc = subprocess.run([sys.executable, "-m", "asyndm", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = {f"{i:05}_{v}" for i in range(images) for v in ("dm", "asyndm")}
    assert {p.stem for p in (run_dir / "images").glob("*.png")} == expected
    assert {p.stem for p in (run_dir / "latents").glob("*.npy")} == expected
    dm = torch.stack([torch.from_numpy(np.load(run_dir / "latents" / f"{j:05}_dm.npy")) for j in range(images)])
    reference = reference_latents(reference_pipe, steps, 1.0, 5.0, seeds=[1234 + j for j in range(images)])
    torch.testing.assert_close(dm, reference, **EXACT)
    asyndm = np.load(run_dir / "latents" / "00000_asyndm.npy")
    assert not np.allclose(asyndm, dm[0].numpy())


# ---------------------------------------------------------------------------- on a GPU (pytest -m gpu)


@pytest.fixture(scope="module")
def cuda_sdxl_backend(tiny_sdxl_path):
    return load_backend(str(tiny_sdxl_path), torch.device("cuda"), torch.float32)


@pytest.mark.gpu
def test_dm_and_all_linear_asyndm_reproduce_diffusers_sdxl_on_cuda(cuda_sdxl_backend, tiny_sdxl_path):
    from test_gpu import TOLERANCE  # TF32 off there too: see true_fp32

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        generators = [torch.Generator("cuda").manual_seed(s) for s in SEEDS]
        reference = cuda_sdxl_backend.pipe(PROMPT, num_images_per_prompt=len(SEEDS), generator=generators, eta=1.0,
                                           guidance_scale=5.0, num_inference_steps=10, output_type="latent").images
        background = torch.full((len(SEEDS), *cuda_sdxl_backend.latent_size), -1, device="cuda")
        for latents in (sample(cuda_sdxl_backend, "dm").latents,
                        sample(cuda_sdxl_backend, "asyndm", masks=background).latents):
            torch.testing.assert_close(latents, reference, **TOLERANCE)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["dm", "asyndm"])
def test_sdxl_step_loop_never_waits_for_the_device(cuda_sdxl_backend, variant):
    """Twice the steps, no more syncs (size ids and per-sample tables are made once per batch)."""
    from test_gpu import _sync_warnings

    def run(steps):
        return lambda: sample(cuda_sdxl_backend, variant, steps=steps)

    run(3)()  # warm-up: kernels, allocator
    assert _sync_warnings(run(6)) == _sync_warnings(run(3))


def test_a_ddim_config_that_clips_is_refused_with_the_fix(tiny_sdxl_path, tmp_path):
    """asyndm's element-wise DDIM step neither clips nor thresholds x̂0, so such configs cannot match."""
    import shutil

    folder = tmp_path / "clipping"
    shutil.copytree(tiny_sdxl_path, folder)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "clip_sample": True}))
    with pytest.raises(ModelError, match="clip_sample=true.*set it to false"):
        load_backend(str(folder), torch.device("cpu"), torch.float32)
