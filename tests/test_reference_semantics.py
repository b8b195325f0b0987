"""End to end with the reference release's settings: its two-file prompt format (legacy indices),
10 steps, batch 2, seed 1234, fp32, CPU. For every curve × mask mode, each model call's timestep
states follow METHOD.md §3 and the masks §6 exactly, checked against NumPy oracles written from the
contract (tests/test_curves_reference.py for §3, ``oracle_masks`` below for §6).
"""

import numpy as np
import pytest
import torch

from asyndm.callbacks import StepInfo
from asyndm.config import CONF_DIR
from asyndm.prompts import load_prompts
from asyndm.sampler import SamplingSettings
from test_curves_reference import F32, oracle_transition

STEPS, SEEDS = 10, [1234, 1235]


def oracle_masks(item_maps: np.ndarray, item_k: list[float], grid, latent, threshold=1.0) -> np.ndarray:
    """§6: binarise each map at threshold × its spatial mean (≥), give overlaps to the largest k (ties
    to the first item), upsample by nearest neighbour; -1 where no item."""
    batch, n_items, _ = item_maps.shape
    maps = item_maps.reshape(batch, n_items, *grid)
    binary = maps >= threshold * maps.mean(axis=(2, 3), keepdims=True)
    weighted = binary * np.asarray(item_k, dtype=np.float32)[None, :, None, None]
    best = weighted.argmax(axis=1)  # first maximum on ties
    cells = np.where(weighted.max(axis=1) > 0, best, -1)
    return cells.repeat(latent[0] // grid[0], axis=1).repeat(latent[1] // grid[1], axis=2)


class RecordCalls:
    needs_item_maps = True

    def __init__(self):
        self.calls: dict[str, list[StepInfo]] = {}

    def __call__(self, info: StepInfo):
        self.calls.setdefault(info.variant, []).append(
            StepInfo(variant=info.variant, step=info.step, latents=None, states=info.states.clone(),
                     next_states=info.next_states.clone(), item_maps=info.item_maps.clone(),
                     assignment=None if info.assignment is None else info.assignment.clone(), grid=info.grid,
                     backend=None))


@pytest.fixture(scope="module")
def legacy_spec():
    folder = CONF_DIR / "prompts" / "legacy"
    return load_prompts(folder / "animal.json", folder / "animal_item.json", limit=1)[0]


@pytest.mark.parametrize("mask", ["dynamic", "static"])
@pytest.mark.parametrize("curve", ["bin", "lin", "exp"])
def test_asyndm_states_and_masks_follow_the_contract(tiny_pipe, legacy_spec, curve, mask):
    settings = SamplingSettings(steps=STEPS, curve=curve, mask_mode=mask)
    recorder = RecordCalls()
    variants = ["dm", "asyndm"] if mask == "static" else ["asyndm"]
    out = tiny_pipe.generate(legacy_spec, SEEDS, settings, variants, item_tokens="legacy",
                             callbacks=[recorder], output_type="latent")
    calls, k = recorder.calls["asyndm"], legacy_spec.k
    latent = tiny_pipe.backend.latent_size
    grid = calls[0].grid
    if mask == "static":  # the dm pass's maps, averaged over its steps, make one fixed mask
        mean = np.stack([c.item_maps.numpy() for c in recorder.calls["dm"]]).mean(axis=0)
        masks = [oracle_masks(mean, k, grid, latent)] * (STEPS + 1)
    else:  # M_-1: the item with the largest token index everywhere; M_i from call i's maps
        last = int(np.argmax([max(p) for p in tiny_pipe.item_tokens(legacy_spec, "legacy").positions]))
        initial = np.full((len(SEEDS), *latent), last)
        masks = [initial] + [oracle_masks(c.item_maps.numpy(), k, grid, latent) for c in calls]
    # masks[j] is M_(j-1): the transition t_i → t_i+1 uses M_(i-1), the one before the loop M_-1
    state = np.full((len(SEEDS), *latent), 1000.0 + 1.0, dtype=F32)
    state = oracle_transition(curve, state, STEPS, masks[0], k, STEPS)
    for i, call in enumerate(calls):
        assert np.array_equal(call.states.numpy(), state), f"{curve}/{mask}: states of call {i}"
        assert np.array_equal(call.assignment.numpy(), masks[i + 1] if mask == "dynamic" else masks[0])
        state = oracle_transition(curve, state, STEPS - i - 1, masks[i], k, STEPS)
        assert np.array_equal(call.next_states.numpy(), state)
    assert (state == 0).all()
    assert torch.equal(out["asyndm"].masks, torch.from_numpy(masks[-1] if mask == "dynamic" else masks[0]))
    assert len(np.unique(masks[-1])) > 1, "the masks split the image"
