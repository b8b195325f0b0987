"""FLUX.1 on the offline ``tiny_flux`` (METHOD.md §9): dm against diffusers' FluxPipeline (embedded guidance,
true CFG, the resolution-dependent mu), per-token timesteps in double- and single-stream blocks against the
plain transformer, joint-attention capture (text first, rotary embedding) against a hand-computed softmax,
and the issue's done-when command with sample.height/width and unpacked (C, h, w) latents."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from asyndm.backends.flux import EmbeddedGuidance
from asyndm.joint_attention import JointAttentionStore, capture_joint_attention, flux_query_keys
from asyndm.sampler import AsyncSampler, SamplingSettings
from asyndm.token_timesteps import DistinctTimesteps
from tests.test_token_timesteps import one_row_per_token

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a cat eating a sandwich"
SEEDS = [1234, 1235]
ITEMS = ["cat", "sandwich"]
K = [0.7, 0.5]
SIDE = 256  # px: 32×32 latents, 16×16 image tokens


@pytest.fixture(scope="module")
def tokens(tiny_flux_backend):
    return tiny_flux_backend.item_tokens(PROMPT, ITEMS, None, "word")


def pipeline_latents(backend, steps, guidance, side=SIDE, seeds=SEEDS, **kwargs):
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    packed = backend.pipe(PROMPT, num_images_per_prompt=len(seeds), generator=generators, guidance_scale=guidance,
                          num_inference_steps=steps, height=side, width=side, output_type="latent", **kwargs).images
    return backend.pipe._unpack_latents(packed, side, side, backend.vae_scale_factor)


def sample(backend, tokens, variant, steps=4, masks=None, **settings):
    settings = {"guidance_scale": 3.5, "height": SIDE, "width": SIDE, **settings}
    sampler = AsyncSampler(backend, SamplingSettings(steps=steps, **settings))
    return sampler.sample_variant(variant, sampler.encode(PROMPT, len(SEEDS)), SEEDS, tokens, K, masks)


# ---------------------------------------------------------------------------- equal to diffusers


def test_dm_reproduces_the_flux_pipeline_with_embedded_guidance(tiny_flux_backend, tokens):
    ours = sample(tiny_flux_backend, tokens, "dm", guidance_scale=3.5).latents
    assert ours.shape == (2, 16, 32, 32)  # unpacked (C, h, w)
    torch.testing.assert_close(ours, pipeline_latents(tiny_flux_backend, 4, 3.5), rtol=1e-6, atol=1e-6)
    other_scale = sample(tiny_flux_backend, tokens, "dm", guidance_scale=1.5).latents
    assert not torch.allclose(ours, other_scale)  # the scale reaches the model


def test_dm_with_true_cfg_reproduces_the_pipeline(tiny_flux_backend, tokens):
    ours = sample(tiny_flux_backend, tokens, "dm", steps=3, true_cfg_scale=2.0, negative_prompt="blurry").latents
    reference = pipeline_latents(tiny_flux_backend, 3, 3.5, true_cfg_scale=2.0, negative_prompt="blurry")
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)


def test_dm_at_another_size_uses_that_sizes_shift(tiny_flux_backend, tokens):
    ours = sample(tiny_flux_backend, tokens, "dm", steps=3, height=128, width=192).latents
    generators = [torch.Generator("cpu").manual_seed(s) for s in SEEDS]
    packed = tiny_flux_backend.pipe(PROMPT, num_images_per_prompt=2, generator=generators, guidance_scale=3.5,
                                    num_inference_steps=3, height=128, width=192, output_type="latent").images
    reference = tiny_flux_backend.pipe._unpack_latents(packed, 128, 192, tiny_flux_backend.vae_scale_factor)
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)


def test_asyndm_with_every_token_linear_reproduces_dm(tiny_flux_backend, tokens):
    background = torch.full((len(SEEDS), 16, 16), -1)
    linear = sample(tiny_flux_backend, tokens, "asyndm", steps=5, masks=background).latents
    dm = sample(tiny_flux_backend, tokens, "dm", steps=5).latents
    torch.testing.assert_close(linear, dm, rtol=1e-5, atol=1e-5)


def _inputs(backend, seed):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 16, 32, 32, generator=generator)
    text = EmbeddedGuidance(3.5)._with_scale(backend.encode(PROMPT, 2, "", False).positive, 2, "cpu")
    return latents, text


def test_a_constant_map_equals_the_scalar_transformer_call(tiny_flux_backend):
    """Double- and single-stream blocks (whose text tokens gather the text stream's row) and the final norm."""
    latents, text = _inputs(tiny_flux_backend, 0)
    states = torch.full((2, 16, 16), 587.5)
    per_token = tiny_flux_backend.predict(latents, states, text, uniform=False, sync_state=torch.tensor(587.5))
    scalar = tiny_flux_backend.predict(latents, states, text, uniform=True)
    torch.testing.assert_close(per_token, scalar, rtol=1e-5, atol=1e-6)


def test_embedding_distinct_timesteps_equals_one_row_per_token(tiny_flux_backend, monkeypatch):
    latents, text = _inputs(tiny_flux_backend, 1)
    generator = torch.Generator().manual_seed(2)
    states = torch.tensor([990.0, 640.25, 300.0])[torch.randint(0, 3, (2, 16, 16), generator=generator)]
    fast = tiny_flux_backend.predict(latents, states, text, uniform=False, sync_state=torch.tensor(300.0))


    monkeypatch.setattr(DistinctTimesteps, "rows", one_row_per_token)
    torch.testing.assert_close(fast, tiny_flux_backend.predict(latents, states, text, uniform=False,
                                                               sync_state=torch.tensor(300.0)),
                               rtol=1e-5, atol=1e-6)


def test_embedded_guidance_rule():
    seen = []

    def model(latents, states, text, capture_rows=None):
        seen.append((dict(text.tensors), capture_rows))
        return torch.full_like(latents, 2.0 if "neg" in text.tensors else 5.0)

    from asyndm.conditioning import PromptConditioning, TextConditioning

    cond = PromptConditioning(TextConditioning({"pos": torch.zeros(2, 1)}), TextConditioning({"neg": torch.zeros(2, 1)}))
    latents, states = torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 1)
    plain = EmbeddedGuidance(3.5)(model, latents, states, cond)
    assert torch.equal(plain.output, torch.full_like(latents, 5.0)) and len(seen) == 1
    assert torch.equal(seen[0][0]["guidance"], torch.tensor([3.5, 3.5])) and seen[0][1] == slice(0, 2)
    true_cfg = EmbeddedGuidance(None, true_cfg_scale=4.0)(model, latents, states, cond)  # schnell: no guidance input
    assert torch.equal(true_cfg.output, torch.full_like(latents, 2.0 + 4.0 * 3.0))
    assert "guidance" not in seen[1][0] and seen[2][1] is None  # masks from the conditional pass only
    assert EmbeddedGuidance(3.5, 4.0).guided and not EmbeddedGuidance(3.5).guided


# ---------------------------------------------------------------------------- joint attention


def _capture_case(backend, monkeypatch, block, single: bool):
    import diffusers.models.transformers.transformer_flux as flux_module

    generator = torch.Generator().manual_seed(3)
    text_len, image_len = 12, 16
    image = torch.randn(3, image_len, 32, generator=generator)
    text = torch.randn(3, text_len, 32, generator=generator)
    ids = torch.cat([torch.zeros(text_len, 3), backend.pipe._prepare_latent_image_ids(1, 4, 4, "cpu", torch.float32)])
    rotary = backend.transformer.pos_embed(ids)
    weights = torch.zeros(text_len, 2)
    weights[1, 0] = 1.0
    weights[[4, 5], 1] = 0.5
    seen = []
    dispatch = flux_module.dispatch_attention_fn

    def recording(query, key, value, **kwargs):
        seen.append((query, key))
        return dispatch(query, key, value, **kwargs)

    def call():
        if single:
            return block.attn(hidden_states=torch.cat([text, image], dim=1), image_rotary_emb=rotary)
        return block.attn(hidden_states=image, encoder_hidden_states=text, image_rotary_emb=rotary)

    with torch.no_grad():
        monkeypatch.setattr(flux_module, "dispatch_attention_fn", recording)
        plain = call()
        monkeypatch.setattr(flux_module, "dispatch_attention_fn", dispatch)
        query, key = (x.transpose(1, 2) for x in seen[0])  # the model's own, (B, heads, text + image, d)
        probs = torch.softmax(query @ key.transpose(-1, -2) / query.shape[-1] ** 0.5, dim=-1)
        expected = (probs[:, :, text_len:, :text_len] @ weights).mean(dim=1).transpose(1, 2)
        # the block's own queries and keys, recorded (the backend's way), recomputed (the fallback), and
        # recomputed with the weights padded to 8 items (compiled blocks: one shape for every prompt)
        for recorded, columns in ((backend.recorded_attention(), None), (None, None), (None, 8)):
            store = JointAttentionStore(weights, columns)
            assert store.weights.shape == (text_len, columns or 2)
            store.text_length = text_len
            with capture_joint_attention([block.attn], store, flux_query_keys, recorded):
                store.rows = slice(0, 2)
                captured = call()
                maps = store.item_maps()
            torch.testing.assert_close(maps, expected[:2], rtol=1e-5, atol=1e-7)
            as_tuple = lambda out: out if isinstance(out, tuple) else (out,)  # noqa: E731
            assert len(as_tuple(plain)) == (1 if single else 2)
            for before, after in zip(as_tuple(plain), as_tuple(captured), strict=True):
                assert torch.equal(before, after)
            assert flux_module.dispatch_attention_fn is dispatch  # the recording is undone


def test_capture_in_a_double_stream_block_equals_a_hand_computed_softmax(tiny_flux_backend, monkeypatch):
    _capture_case(tiny_flux_backend, monkeypatch, tiny_flux_backend.transformer.transformer_blocks[0], single=False)


def test_capture_in_a_single_stream_block_equals_a_hand_computed_softmax(tiny_flux_backend, monkeypatch):
    _capture_case(tiny_flux_backend, monkeypatch, tiny_flux_backend.transformer.single_transformer_blocks[1], single=True)


def test_masks_read_t5_positions_and_single_stream_blocks_by_setting(tiny_flux_backend, tokens):
    assert tokens.extra == {"t5": [[1], [4]]}
    weights = tiny_flux_backend.item_weights(tokens)
    assert weights.shape == (512, 2) and weights[1, 0] == weights[4, 1] == 1.0
    assert tiny_flux_backend.default_mask_blocks() == [0]  # the middle of the 2 double-stream blocks
    masks = {blocks: sample(tiny_flux_backend, tokens, "asyndm", steps=3, mask_blocks=blocks).assignment
             for blocks in [None, (3,)]}  # block 3: the second single-stream block
    assert masks[None].shape == (2, 16, 16) and (masks[None] >= 0).any() and (masks[None] < 0).any()
    assert not torch.equal(masks[None], masks[(3,)])
    with pytest.raises(ValueError, match="mask.blocks"):
        sample(tiny_flux_backend, tokens, "asyndm", steps=2, mask_blocks=(6,))  # 2 double + 4 single: 0 … 5


# ---------------------------------------------------------------------------- the done-when command


def test_cli_on_a_flux_folder_writes_paired_files_and_dm_equals_diffusers(tiny_flux_backend, tiny_flux_path, tmp_path):
    run_dir = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    args = ["model=local", f"model.path={tiny_flux_path}", f"prompt={PROMPT}", "items=[cat,sandwich]", "k=[0.7,0.7]",
            "variants=[dm,asyndm]", "sample.guidance_scale=3.5", "sample.height=512", "sample.width=512",
            "save.latents=true", "sample.steps=3", "sample.images_per_prompt=2", "sample.batch_size=2", "device=cpu",
            "progress=false", f"run_dir={run_dir}"]
    proc = subprocess.run([sys.executable, "-m", "asyndm", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for variant in ("dm", "asyndm"):
        for j in range(2):
            assert (run_dir / "images" / f"{j:05}_{variant}.png").is_file()
            assert np.load(run_dir / "latents" / f"{j:05}_{variant}.npy").shape == (16, 64, 64)  # unpacked
    dm = torch.from_numpy(np.stack([np.load(run_dir / "latents" / f"{j:05}_dm.npy") for j in range(2)]))
    reference = pipeline_latents(tiny_flux_backend, 3, 3.5, side=512)  # seeds seed + j
    torch.testing.assert_close(dm, reference, rtol=1e-5, atol=1e-5)
