"""The oracle variant (asyndm/oracle.py): asyndm's schedule on masks read off dm's finished image."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from asyndm.context_world import RELATIONS, render_scene, sample_context_scene, scene_masks
from asyndm.oracle import load_oracle, oracle_masks
from asyndm.prompts import PromptSpec
from asyndm.sampler import SamplingSettings
from asyndm.variants import get_variant

ROOT = Path(__file__).resolve().parents[1]
SPEC = PromptSpec(0, "a photo of a cat", ["cat"], [0.5])
SETTINGS = SamplingSettings(steps=4, guidance_scale=3.0)


def test_an_oracle_that_finds_no_item_gives_dm_and_the_masks_are_the_oracles(tiny_pipe):
    """All cells context: every pixel on the linear curve, which is dm (an all-linear asyndm equals dm)."""
    seen = []

    def nothing(image, spec, grid):
        seen.append((spec.prompt, grid))
        return np.full(grid, -1)

    out = tiny_pipe.generate(SPEC, [3, 4], SETTINGS, ["dm", "asyndm_oracle"], oracle_masks=nothing)
    grid = tuple(out["dm"].latents.shape[-2:])
    assert seen == [(SPEC.prompt, grid)] * 2  # once per dm image, on the timestep grid
    assert (out["asyndm_oracle"].masks == -1).all()
    torch.testing.assert_close(out["asyndm_oracle"].latents, out["dm"].latents, rtol=0, atol=1e-5)


def test_an_oracle_mask_slows_its_cells_and_equals_asyndm_on_the_same_fixed_masks(tiny_pipe):
    def left_half(image, spec, grid):
        cells = np.full(grid, -1)
        cells[:, : grid[1] // 2] = 0
        return cells

    out = tiny_pipe.generate(SPEC, [5], SETTINGS, ["dm", "asyndm_oracle"], oracle_masks=left_half)
    fixed = out["asyndm_oracle"].masks
    assert (fixed[0, :, 0] == 0).all() and (fixed[0, :, -1] == -1).all()
    assert not torch.allclose(out["asyndm_oracle"].latents, out["dm"].latents, atol=1e-3)
    same = tiny_pipe.generate(SPEC, [5], SETTINGS, ["asyndm"], masks=fixed)
    torch.testing.assert_close(out["asyndm_oracle"].latents, same["asyndm"].latents, rtol=0, atol=0)


def test_an_oracle_variant_without_an_oracle_or_with_a_bad_one_is_refused(tiny_pipe):
    with pytest.raises(ValueError, match="pass oracle="):
        tiny_pipe.generate(SPEC, [0], SETTINGS, ["dm", "asyndm_oracle"])
    with pytest.raises(ValueError, match="shape"):
        tiny_pipe.generate(SPEC, [0], SETTINGS, ["asyndm_oracle"], oracle_masks=lambda image, spec, grid: np.zeros((3, 3)))
    with pytest.raises(ValueError, match="outside -1..0"):
        oracle_masks(lambda image, spec, grid: np.ones(grid), [None], SPEC, (4, 4))


def test_composed_oracle_variants_keep_the_oracle_masks():
    assert get_variant("asyndm_oracle").masks == "oracle"
    assert get_variant("asyndm_oracle+cfgpp").masks == "oracle" and get_variant("asyndm+cfgpp").masks == "attention"
    assert load_oracle("evaluation.shapes_context:oracle_assignment").__name__ == "oracle_assignment"


def test_context_oracle_reads_the_scene_ground_truth_off_rendered_scenes():
    from evaluation.shapes_context import oracle_assignment

    rng = np.random.default_rng(0)
    for i in range(20):
        scene = sample_context_scene(rng, list(RELATIONS)[i % len(RELATIONS)], train=False)
        spec = PromptSpec(0, scene.caption, [scene.objects[0].shape], [0.5])
        image = Image.fromarray(render_scene(scene.structure, scene.objects))
        for grid in ((32, 32), (16, 16)):
            truth = oracle_assignment(image, spec, grid)
            assert np.array_equal(truth, scene_masks(scene, grid).assignment())
            assert 0 < (truth == 0).sum() < truth.size / 4  # a small object, the rest context


@pytest.mark.skipif(not (ROOT / "models" / "toy_context" / "model_index.json").is_file(), reason="no models/toy_context")
def test_on_the_context_model_the_oracle_masks_are_the_dm_images_ground_truth():
    from asyndm import AsyncPipeline
    from evaluation.shapes_context import oracle_assignment

    pipe = AsyncPipeline.from_pretrained("toy_context", device="cpu")
    spec = PromptSpec(0, "a red circle above the blue band", ["circle"], [0.5])
    out = pipe.generate(spec, [1234, 1235], SETTINGS, ["dm", "asyndm_oracle"],
                        oracle_masks="evaluation.shapes_context:oracle_assignment")
    grid = tuple(out["dm"].latents.shape[-2:])
    for image, masks in zip(out["dm"].images, out["asyndm_oracle"].masks):
        assert np.array_equal(masks.numpy(), oracle_assignment(image, spec, grid))


def test_the_dm_images_the_oracle_reads_are_decoded_once(tiny_pipe, monkeypatch):
    from asyndm.sampler import AsyncSampler

    calls = []
    original = AsyncSampler.decode

    def counting(self, latents):
        calls.append(latents.shape[0])
        return original(self, latents)

    monkeypatch.setattr(AsyncSampler, "decode", counting)
    out = tiny_pipe.generate(SPEC, [1, 2], SETTINGS, ["dm", "asyndm_oracle"], oracle_masks=lambda im, sp, g: np.full(g, -1))
    assert len(calls) == 2 and len(out["dm"].images) == 2  # dm once (oracle and output share it), the oracle once
