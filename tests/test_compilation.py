"""sample.compile=true (asyndm/compilation.py): compiled latents equal eager ones, and a multi-prompt run
compiles during its first batch only.

One tiny SD model is compiled here, its own copy (compiling changes the model in place). The run
covers what makes graphs recompile: steps, prompts with 1, 2 and 3 items (other token counts),
dynamic masks that change every step, mask=static, and dm, dm_concave and asyndm sharing the model.
The tiny SD3 and Flux models are compiled the same way (per-token calls, whose number of distinct
timesteps changes every call), and checked to run their per-token calls compiled.
"""

import cProfile
import inspect
import pstats

import pytest
import torch

from asyndm.compilation import compile_count
from asyndm.models import load_backend
from asyndm.sampler import AsyncSampler, SamplingSettings
from asyndm.token_timesteps import TokenTimesteps

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


def _python_calls(code, run) -> int:
    """How often ``code`` ran as Python during ``run()``: a compiled region's code runs only while traced."""
    profile = cProfile.Profile()
    profile.runcall(run)
    stats = pstats.Stats(profile).stats
    return sum(calls for (file, line, name), (_, calls, *_) in stats.items()
               if (file, line, name) == (code.co_filename, code.co_firstlineno, code.co_name))


#: the per-token forward of an image-stream AdaLN, run inside the compiled blocks
ADALN_CODE = next(c for c in TokenTimesteps._adaln.__code__.co_consts if inspect.iscode(c) and c.co_name == "forward")


@pytest.fixture(scope="module", params=["tiny_sd3_path", "tiny_flux_path"])
def mmdit_runs(request):
    """SD3 and Flux (per-token timesteps, asyndm/token_timesteps.py): eager latents of two prompts, then
    compiled ones with the graphs counted after each, and how often the per-token AdaLN ran as Python."""
    torch._dynamo.reset()
    backend = load_backend(str(request.getfixturevalue(request.param)), torch.device("cpu"), torch.float32)
    prompts = PROMPTS[:2]
    eager_python = _python_calls(ADALN_CODE, lambda: _sample(backend, "dynamic", prompts[0], False))
    eager = [_sample(backend, "dynamic", prompt, False) for prompt in prompts]
    before = compile_count()
    compiled, counts = [_sample(backend, "dynamic", prompts[0], True)], [compile_count() - before]
    results = {}
    compiled_python = _python_calls(ADALN_CODE, lambda: results.update(_sample(backend, "dynamic", prompts[1], True)))
    compiled.append(results)
    counts.append(compile_count() - before)
    return backend, eager, compiled, counts, eager_python, compiled_python


def test_mmdit_per_token_calls_run_compiled(mmdit_runs):
    """asyndm's per-token calls go through the compiled blocks: after the first batch, the per-token
    AdaLN no longer runs as Python (eagerly it runs in every block of every per-token call)."""
    _, _, _, _, eager_python, compiled_python = mmdit_runs
    assert eager_python > 0
    assert compiled_python == 0


def test_mmdit_compiled_latents_equal_eager_with_no_recompiles(mmdit_runs):
    """dm, dm_concave and asyndm compiled within 1e-3 of eager; the second prompt (other items and
    tokens, other distinct timesteps per call) compiles nothing."""
    backend, eager, compiled, counts, _, _ = mmdit_runs
    assert backend.compiled == "default"
    for reference, result in zip(eager, compiled):
        for name in VARIANTS:
            close = (result[name] - reference[name]).abs() <= 1e-3 * reference[name].abs()
            assert close.float().mean() >= 0.995, name
        assert (result["masks"] == reference["masks"]).float().mean() >= 0.99
    assert counts[0] > 0 and counts[1] == counts[0], counts


@torch.no_grad()
def test_mmdit_compiled_per_token_call_equals_the_oracle(mmdit_runs):
    """One compiled per-token call against the independent forward of tests/test_mmdit_oracle.py."""
    from test_mmdit_oracle import _inputs, _random_map, _text_timesteps, oracle

    backend = mmdit_runs[0]
    latents, text = _inputs(backend, seed=7)
    values = torch.tensor([[955.0, 640.25, 301.5, 42.0], [870.5, 512.0, 233.0, 118.75]])
    states = _random_map(values, backend.map_shape(latents), seed=8)
    ours = backend.predict(latents, states, text, uniform=False, sync_state=777.0)
    expected = oracle(backend, latents, text, backend.model_timesteps(states), _text_timesteps(backend, 777.0, states))
    torch.testing.assert_close(ours, expected, rtol=1e-3, atol=1e-4)
