"""SD3 (MMDiT, flow matching) on the offline ``tiny_sd3`` (METHOD.md §9): dm against diffusers'
StableDiffusion3Pipeline, per-token timesteps against the plain transformer, joint-attention capture
against a hand-computed softmax, item words in CLIP and T5, mask.blocks, dropped T5, and the issue's
done-when command end to end."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from asyndm.callbacks import RecordTimesteps
from asyndm.joint_attention import JointAttentionStore, capture_joint_attention, sd3_query_keys
from asyndm.sampler import AsyncSampler, SamplingSettings
from asyndm.token_timesteps import DistinctTimesteps
from tests.test_token_timesteps import one_row_per_token

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a cat eating a sandwich"
SEEDS = [1234, 1235]
ITEMS = ["cat", "sandwich"]
K = [0.7, 0.5]


@pytest.fixture(scope="module")
def tokens(tiny_sd3_backend):
    return tiny_sd3_backend.item_tokens(PROMPT, ITEMS, None, "word")


def pipeline_latents(backend, steps, guidance, negative_prompt="", seeds=SEEDS, pipe=None):
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    return (pipe or backend.pipe)(PROMPT, num_images_per_prompt=len(seeds), generator=generators,
                                  guidance_scale=guidance, num_inference_steps=steps, negative_prompt=negative_prompt,
                                  output_type="latent").images


def sample(backend, tokens, variant, steps=4, masks=None, callbacks=(), **settings):
    sampler = AsyncSampler(backend, SamplingSettings(steps=steps, **settings))
    return sampler.sample_variant(variant, sampler.encode(PROMPT, len(SEEDS)), SEEDS, tokens, K, masks, callbacks)


# ---------------------------------------------------------------------------- equal to diffusers


@pytest.mark.parametrize("guidance,negative", [(5.0, ""), (4.0, "blurry, low quality"), (1.0, "")])
def test_dm_reproduces_the_sd3_pipeline(tiny_sd3_backend, tokens, guidance, negative):
    ours = sample(tiny_sd3_backend, tokens, "dm", guidance_scale=guidance, negative_prompt=negative).latents
    reference = pipeline_latents(tiny_sd3_backend, 4, guidance, negative)
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)


def test_asyndm_with_every_token_linear_reproduces_dm(tiny_sd3_backend, tokens):
    """Per-token transformer + per-token Euler step + the linear curve in unshifted time == dm."""
    background = torch.full((len(SEEDS), 16, 16), -1)
    recorder = RecordTimesteps()
    linear = sample(tiny_sd3_backend, tokens, "asyndm", steps=6, masks=background, callbacks=[recorder]).latents
    dm = sample(tiny_sd3_backend, tokens, "dm", steps=6).latents
    torch.testing.assert_close(linear, dm, rtol=1e-5, atol=1e-5)
    # the model saw the scheduler's own (shifted, unrounded) timesteps at every token
    scheduler = tiny_sd3_backend.pipe.scheduler
    scheduler.set_timesteps(6)
    seen = torch.stack([m.flatten()[0] for m in recorder.maps["asyndm"]])
    assert all(m.unique().numel() == 1 for m in recorder.maps["asyndm"])
    torch.testing.assert_close(seen, scheduler.timesteps, rtol=1e-6, atol=1e-4)
    assert (seen != seen.round()).any()


def _latents_and_text(backend, rows=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(rows, 16, 32, 32, generator=generator)
    cond = backend.encode(PROMPT, rows, "", False).positive
    return latents, cond


def test_a_constant_map_equals_the_scalar_transformer_call(tiny_sd3_backend):
    latents, text = _latents_and_text(tiny_sd3_backend)
    states = torch.full((2, 16, 16), 613.25)
    per_token = tiny_sd3_backend.predict(latents, states, text, uniform=False, sync_state=torch.tensor(613.25))
    scalar = tiny_sd3_backend.predict(latents, states, text, uniform=True)
    torch.testing.assert_close(per_token, scalar, rtol=1e-5, atol=1e-6)
    assert not torch.equal(scalar, tiny_sd3_backend.predict(latents, states - 200, text, uniform=True))


def test_a_map_constant_per_image_equals_diffusers_per_sample_timesteps(tiny_sd3_backend):
    latents, text = _latents_and_text(tiny_sd3_backend, seed=1)
    states = torch.stack([torch.full((16, 16), 900.0), torch.full((16, 16), 250.5)])
    tiny_sd3_backend.text_timestep = "mean"  # each sample's own timestep, as diffusers' per-sample call
    try:
        ours = tiny_sd3_backend.predict(latents, states, text, uniform=False)
    finally:
        tiny_sd3_backend.text_timestep = "linear"
    timesteps = tiny_sd3_backend.model_timesteps(states)[:, 0, 0]
    reference = tiny_sd3_backend.transformer(hidden_states=latents, timestep=timesteps, return_dict=False,
                                             **text.tensors)[0]
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_embedding_distinct_timesteps_equals_one_row_per_token(tiny_sd3_backend, monkeypatch):
    """The gather from distinct timesteps against the full-cost form: every token its own embedding row."""
    latents, text = _latents_and_text(tiny_sd3_backend, seed=2)
    generator = torch.Generator().manual_seed(3)
    states = torch.tensor([980.0, 700.5, 410.0, 55.0])[torch.randint(0, 4, (2, 16, 16), generator=generator)]
    fast = tiny_sd3_backend.predict(latents, states, text, uniform=False, sync_state=torch.tensor(55.0))


    monkeypatch.setattr(DistinctTimesteps, "rows", one_row_per_token)
    full = tiny_sd3_backend.predict(latents, states, text, uniform=False, sync_state=torch.tensor(55.0))
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)
    # and the per-token timesteps matter: the same call with one timestep differs
    assert (fast - tiny_sd3_backend.predict(latents, states.mean().expand_as(states), text, uniform=True)).abs().max() > 1e-3


def test_the_text_stream_sees_the_calls_own_timestep_by_default_and_a_statistic_by_setting(tiny_sd3_backend):
    states = torch.full((2, 4, 4), 700.0)
    states[:, :2] = 400.0
    assert tiny_sd3_backend._text_states(states, torch.tensor(350.5)).tolist() == [350.5, 350.5]
    with pytest.raises(ValueError, match="sync_state"):
        tiny_sd3_backend._text_states(states, None)
    for setting, expected in (("min", 400.0), ("mean", 550.0), ("max", 700.0)):
        tiny_sd3_backend.text_timestep = setting
        try:
            assert tiny_sd3_backend._text_states(states, torch.tensor(350.5)).tolist() == [expected, expected]
        finally:
            tiny_sd3_backend.text_timestep = "linear"


def test_the_loop_names_every_per_token_call_ahead_and_an_unnamed_call_gives_the_same_output(tiny_sd3_backend, tokens):
    """Dynamic masks under CFG, zsampling's extra calls: every per-token call's distinct timesteps were
    found one call ahead (docs/mmdit.md, "Cost"); a call on a map nobody announced is counted and
    gives the same output as the announced one."""
    backend = tiny_sd3_backend
    before = backend.unannounced_calls
    seen = []

    class RecordStates:
        needs_item_maps = False

        def __call__(self, info):
            seen.append(info.next_states.clone())

    sample(backend, tokens, "asyndm", steps=4, guidance_scale=5.0, callbacks=[RecordStates()])
    sample(backend, tokens, "asyndm+zsampling", steps=3, guidance_scale=5.0)
    assert backend.unannounced_calls == before
    latents, text = _latents_and_text(backend, seed=6)
    states = seen[2]  # a map with several distinct timesteps per sample
    assert states.flatten(1).unique(dim=1).shape[1] > 1
    backend.announce(states)
    announced = backend.predict(latents, states, text, uniform=False, sync_state=states.min())
    assert backend.unannounced_calls == before
    unnamed = backend.predict(latents, states.clone(), text, uniform=False, sync_state=states.min())
    assert backend.unannounced_calls == before + 1
    assert torch.equal(announced, unnamed)


def test_the_model_is_restored_after_a_per_token_call(tiny_sd3_backend):
    transformer = tiny_sd3_backend.transformer
    latents, text = _latents_and_text(tiny_sd3_backend, seed=4)
    states = torch.full((2, 16, 16), 500.0)
    states[:, :8] = 800.0
    tiny_sd3_backend.predict(latents, states, text, uniform=False, sync_state=torch.tensor(500.0))
    modules = [m for m in transformer.modules() if "forward" in vars(m) or m._forward_hooks]
    assert modules == []


# ---------------------------------------------------------------------------- joint attention


def test_capture_equals_a_hand_computed_joint_softmax_and_leaves_the_output_unchanged(tiny_sd3_backend, monkeypatch):
    block = tiny_sd3_backend.transformer.transformer_blocks[1]
    attn = block.attn
    generator = torch.Generator().manual_seed(5)
    image = torch.randn(3, 16, 32, generator=generator)
    text = torch.randn(3, 10, 32, generator=generator)
    weights = torch.zeros(10, 2)
    weights[2, 0] = 1.0
    weights[[5, 6], 1] = 0.5

    seen = []
    sdpa = F.scaled_dot_product_attention

    def recording(q, k, v, *args, **kwargs):
        seen.append((q, k))
        return sdpa(q, k, v, *args, **kwargs)

    with torch.no_grad():
        monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
        plain = attn(hidden_states=image, encoder_hidden_states=text)
        monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
        query, key = seen[0]  # the model's own (B, heads, image + text, d)
        probs = torch.softmax(query @ key.transpose(-1, -2) / query.shape[-1] ** 0.5, dim=-1)
        expected = (probs[:, :, :16, 16:] @ weights).mean(dim=1).transpose(1, 2)  # (B, items, image tokens)

        store = JointAttentionStore(weights)
        with capture_joint_attention([attn], store, sd3_query_keys):
            store.rows = slice(1, 3)
            captured = attn(hidden_states=image, encoder_hidden_states=text)
            maps = store.item_maps()
    torch.testing.assert_close(maps, expected[1:], rtol=1e-5, atol=1e-7)
    for before, after in zip(plain, captured):
        assert torch.equal(before, after)
    assert attn.processor.__class__.__name__ == "JointAttnProcessor2_0"


def test_item_words_resolve_to_clip_and_t5_positions(tiny_sd3_backend, tokens):
    assert tokens.positions == [[2], [5]]  # [start, a, cat, eating, a, sandwich, end]
    assert tokens.extra == {"t5": [[1], [4]]}  # T5 has no start token
    weights = tiny_sd3_backend.item_weights(tokens)
    assert weights.shape == (77 + 256, 2)
    assert weights[2, 0] == weights[77 + 1, 0] == 0.5  # CLIP and T5 segments averaged
    assert weights[5, 1] == weights[77 + 4, 1] == 0.5
    assert torch.equal(weights.sum(dim=0), torch.ones(2))
    legacy = tiny_sd3_backend.item_tokens("A Red car, and a sheep.", ["car", "sheep"], [2, 5], "legacy")
    assert legacy.positions == [[3], [6]]  # the reference's word index + 1, punctuation and all ("a")
    t5 = tiny_sd3_backend.pipe.tokenizer_3
    pieces = t5.convert_ids_to_tokens(t5("A Red car, and a sheep.").input_ids)
    assert [[pieces[p] for p in positions] for positions in legacy.extra["t5"]] == [["▁car"], ["▁a"]]
    assert legacy.extra["t5"] == [[2], [5]]  # the T5 tokens over the same characters: ▁A ▁Red ▁car , ▁and ▁a


def test_mask_blocks_choose_the_captured_blocks(tiny_sd3_backend, tokens):
    assert tiny_sd3_backend.default_mask_blocks() == [1]
    masks = {blocks: sample(tiny_sd3_backend, tokens, "asyndm", steps=3, mask_blocks=blocks).assignment
             for blocks in [(0,), (3,), None]}
    assert masks[None].shape == (2, 16, 16)
    assert (masks[None] >= 0).any() and (masks[None] < 0).any()
    assert not torch.equal(masks[(0,)], masks[(3,)])
    with pytest.raises(ValueError, match="mask.blocks"):
        sample(tiny_sd3_backend, tokens, "asyndm", steps=2, mask_blocks=(4,))
    with pytest.raises(ValueError, match="mask.resolution"):
        sample(tiny_sd3_backend, tokens, "asyndm", steps=2, mask_resolution=8)


def test_static_masks_come_from_the_dm_pass(tiny_sd3_backend, tokens):
    sampler = AsyncSampler(tiny_sd3_backend, SamplingSettings(steps=3, mask_mode="static"))
    results = sampler.sample(PROMPT, tokens, K, SEEDS, ["dm", "asyndm"])
    assert results["asyndm"].assignment.shape == (2, 16, 16)
    assert not torch.equal(results["dm"].latents, results["asyndm"].latents)


def test_t5_can_be_dropped(tiny_sd3_path):
    from diffusers import StableDiffusion3Pipeline

    from asyndm.models import load_backend

    backend = load_backend(str(tiny_sd3_path), torch.device("cpu"), torch.float32,
                           skip_components=("text_encoder_3", "tokenizer_3"))
    assert backend.pipe.text_encoder_3 is None
    tokens = backend.item_tokens(PROMPT, ITEMS, None, "word")
    assert tokens.extra == {}
    assert backend.item_weights(tokens)[77:].abs().sum() == 0  # the masks read CLIP alone
    ours = sample(backend, tokens, "dm", steps=3).latents
    reference = StableDiffusion3Pipeline.from_pretrained(str(tiny_sd3_path), text_encoder_3=None, tokenizer_3=None)
    reference.set_progress_bar_config(disable=True)
    torch.testing.assert_close(ours, pipeline_latents(backend, 3, 5.0, pipe=reference), rtol=1e-6, atol=1e-6)
    assert sample(backend, tokens, "asyndm", steps=3).assignment.shape == (2, 16, 16)


# ---------------------------------------------------------------------------- the done-when command


def test_cli_on_an_sd3_folder_writes_paired_files_and_dm_equals_diffusers(tiny_sd3_backend, tiny_sd3_path, tmp_path):
    run_dir = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    args = ["model=local", f"model.path={tiny_sd3_path}", f"prompt={PROMPT}", "items=[cat,sandwich]", "k=[0.7,0.7]",
            "variants=[dm,dm_concave,asyndm]", "save.latents=true", "save.masks=true", "sample.steps=4",
            "sample.images_per_prompt=2", "sample.batch_size=2", "device=cpu", "progress=false", f"run_dir={run_dir}"]
    proc = subprocess.run([sys.executable, "-m", "asyndm", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for variant in ("dm", "dm_concave", "asyndm"):
        for j in range(2):
            assert (run_dir / "images" / f"{j:05}_{variant}.png").is_file()
            assert np.load(run_dir / "latents" / f"{j:05}_{variant}.npy").shape == (16, 32, 32)
    assert sorted(p.name for p in (run_dir / "masks").iterdir()) == ["00000_asyndm.png", "00001_asyndm.png"]
    dm = torch.from_numpy(np.stack([np.load(run_dir / "latents" / f"{j:05}_dm.npy") for j in range(2)]))
    reference = pipeline_latents(tiny_sd3_backend, 4, 5.0)  # seeds seed + j, guidance 5, negative ""
    torch.testing.assert_close(dm, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preset,smoke,model,steps,guidance", [
    ("sd35_medium", "tiny_sd3", "stabilityai/stable-diffusion-3.5-medium", 40, 4.5),
    ("sd35_large", "tiny_sd3", "stabilityai/stable-diffusion-3.5-large", 28, 3.5),
    ("flux_dev", "tiny_flux", "black-forest-labs/FLUX.1-dev", 28, 3.5),
    ("flux_schnell", "tiny_flux", "black-forest-labs/FLUX.1-schnell", 4, 0.0),
])
def test_mmdit_presets_compose(preset, smoke, model, steps, guidance):
    from hydra import compose, initialize_config_dir

    from asyndm.config import CONF_DIR, register_resolvers, validate

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={preset}"], return_hydra_config=True)
        tiny = compose(config_name="config", overrides=[f"experiment={preset}", f"smoke={smoke}"],
                       return_hydra_config=True)
    validate(cfg)
    validate(tiny)
    assert (cfg.model.path, cfg.sample.steps, cfg.sample.guidance_scale, cfg.precision) == (model, steps, guidance, "bf16")
    assert list(cfg.variants) == ["dm", "dm_concave", "asyndm"] and cfg.prompts.item_tokens == "legacy"
    assert tiny.model.builder == smoke and tiny.precision == "fp32" and tiny.sample.steps == 3
    assert tiny.hydra.sweep.dir == f"outputs/sweeps/smoke/{preset}"
    assert tiny.sample.height == (256 if smoke == "tiny_flux" else None)
