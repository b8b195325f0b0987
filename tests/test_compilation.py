"""sample.compile=true (asyndm/compilation.py): compiled latents equal eager ones, and a multi-prompt run
compiles during its first batch only.

One tiny SD model is compiled here, its own copy (compiling changes the model in place). The run
covers what makes graphs recompile: steps, prompts with 1, 2 and 3 items (other token counts),
dynamic masks that change every step, mask=static, and dm, dm_concave and asyndm sharing the model.
"""

import pytest
import torch

from asyndm.compilation import compile_count
from asyndm.models import load_backend
from asyndm.sampler import AsyncSampler, SamplingSettings

pytestmark = pytest.mark.slow

PROMPTS = [("a cat eating a sandwich", ["cat", "sandwich"]), ("a red dog", ["dog"]),
           ("a bird and a horse under a green tree", ["bird", "horse", "tree"])]
BATCHES = [(mask, prompt) for mask in ("dynamic", "static") for prompt in PROMPTS]
VARIANTS = ["dm", "dm_concave", "asyndm"]


def _sample(backend, mask, prompt, compiled):
    settings = SamplingSettings(steps=7, mask_mode=mask, height=64, width=64, compile=compiled)
    sampler = AsyncSampler(backend, settings)
    text, items = prompt
    tokens = backend.item_tokens(text, items, None, "word")
    results = sampler.sample(text, tokens, [0.7] * len(items), [11, 12], VARIANTS)
    return {**{name: result.latents for name, result in results.items()}, "masks": results["asyndm"].assignment}


@pytest.fixture(scope="module")
def runs(tiny_path):
    """Eager latents of every batch, then compiled ones with the graphs counted after each batch."""
    torch._dynamo.reset()  # graphs an earlier test compiled for the same code (the benchmark's) would serve here
    backend = load_backend(str(tiny_path), torch.device("cpu"), torch.float32)
    eager = [_sample(backend, mask, prompt, False) for mask, prompt in BATCHES]
    before = compile_count()
    compiled, counts = [], []
    for mask, prompt in BATCHES:
        compiled.append(_sample(backend, mask, prompt, True))
        counts.append(compile_count() - before)
    return backend, eager, compiled, counts


def test_compiled_latents_equal_eager(runs):
    _, eager, compiled, _ = runs
    for reference, result in zip(eager, compiled):
        for name in VARIANTS:
            close = (result[name] - reference[name]).abs() <= 1e-3 * reference[name].abs()
            assert close.float().mean() >= 0.995, name


def test_no_recompiles_after_the_first_batch(runs):
    """Each mask mode is a run of its own: after its first batch, no graph is compiled."""
    backend, _, _, counts = runs
    assert backend.compiled == "default"
    dynamic, static = counts[: len(PROMPTS)], counts[len(PROMPTS):]
    assert dynamic[0] > 0  # the first batch compiled: the count sees compiles
    assert dynamic == [dynamic[0]] * len(PROMPTS), f"graphs compiled after each batch: {counts}"
    assert static == [static[0]] * len(PROMPTS), f"graphs compiled after each batch: {counts}"


def test_masks_are_captured_under_compile(runs):
    """asyndm's final masks come from the capture, traced inside the compiled stages."""
    _, eager, compiled, _ = runs
    for reference, result in zip(eager, compiled):
        assert (result["masks"] == reference["masks"]).float().mean() >= 0.99
        assert len(result["masks"].unique()) > 1  # items and background: the capture saw the prompt


def test_sd3_plain_calls_compile_once_and_per_token_calls_stay_eager(tiny_sd3_path):
    """SD3 (the MMDiT families): the repeated blocks compile for plain calls (dm, dm_concave) within
    tolerance and once; per-token calls (asyndm) run eagerly under compile, so they equal eager exactly."""
    backend = load_backend(str(tiny_sd3_path), torch.device("cpu"), torch.float32)
    eager = [_sample(backend, "dynamic", prompt, False) for prompt in PROMPTS[:2]]
    before = compile_count()
    counts = []
    for prompt, reference in zip(PROMPTS[:2], eager):
        result = _sample(backend, "dynamic", prompt, True)
        counts.append(compile_count() - before)
        for name in ("dm", "dm_concave"):
            close = (result[name] - reference[name]).abs() <= 1e-3 * reference[name].abs()
            assert close.float().mean() >= 0.995, name
        assert torch.equal(result["asyndm"], reference["asyndm"])
    assert counts[0] > 0 and counts[1] == counts[0], counts
