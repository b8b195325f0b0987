"""sample.compile=true (asyndm/compilation.py): compiled latents equal eager ones, and a multi-prompt run
compiles during its first batch only.

One tiny SD model is compiled here, its own copy (compiling changes the model in place). The run
covers what makes graphs recompile: steps, prompts with 1, 2 and 3 items (other token counts),
dynamic masks that change every step, mask=static, and dm, dm_concave and asyndm sharing the model.
The tiny SD3, Flux and Wan models are compiled the same way (per-token calls; SD3's and Flux's
number of distinct timesteps changes every call), and checked to run their per-token calls compiled.
"""

import inspect
import sys

import pytest
import torch
from torch._dynamo.utils import counters

from asyndm.compilation import compile_count
from asyndm.models import load_backend
from asyndm.sampler import AsyncSampler, SamplingSettings
from asyndm.token_timesteps import TokenTimesteps

pytestmark = pytest.mark.slow

PROMPTS = [("a cat eating a sandwich", ["cat", "sandwich"]), ("a red dog", ["dog"]),
           ("a bird and a horse under a green tree", ["bird", "horse", "tree"])]
BATCHES = [(mask, prompt) for mask in ("dynamic", "static") for prompt in PROMPTS]
VARIANTS = ["dm", "dm_concave", "asyndm"]


def _sample(backend, mask, prompt, compiled, size=(64, 64)):
    settings = SamplingSettings(steps=7, mask_mode=mask, height=size[0], width=size[1], compile=compiled)
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


def _python_calls(codes, run) -> dict:
    """How often each code object ran as itself during ``run()``. A compiled frame runs dynamo's
    transformed copy of the code (another code object), and inlined calls run in the graph, so the
    original code runs only eagerly: where dynamo gave a frame up, or the model was not compiled."""
    counts = dict.fromkeys(codes, 0)

    def profile(frame, event, arg):
        if event == "call" and frame.f_code in counts:
            counts[frame.f_code] += 1

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return {f"{code.co_name}@{code.co_firstlineno}": calls for code, calls in counts.items()}


#: the per-token forward of an image-stream AdaLN, run inside the compiled blocks
ADALN_CODE = next(c for c in TokenTimesteps._adaln.__code__.co_consts if inspect.iscode(c) and c.co_name == "forward")
#: the transformer families: the model folder, how it loads (Wan: 5 frames, 2 latent frames) and the image size
TRANSFORMERS = {
    "sd3": ("tiny_sd3_path", {}, (64, 64)),
    "flux": ("tiny_flux_path", {}, (64, 64)),
    "wan": (None, {"num_frames": 5}, (64, 96)),
}


@pytest.fixture(scope="module", params=list(TRANSFORMERS))
def transformer_runs(request):
    """SD3, Flux (per-token AdaLN, asyndm/token_timesteps.py) and Wan (the model's own per-token input):
    eager latents of two prompts, then compiled ones with the graphs counted after each, and how often
    the compiled code ran as Python (the blocks' forward; SD3/Flux: the per-token AdaLN too)."""
    torch._dynamo.reset()
    folder, load, size = TRANSFORMERS[request.param]
    if folder is None:
        from asyndm.offline.wan import build_tiny_wan

        path = build_tiny_wan()
    else:
        path = request.getfixturevalue(folder)
    backend = load_backend(str(path), torch.device("cpu"), torch.float32, **load)
    codes = {type(region).forward.__code__ for region in backend.compile_regions()}
    if request.param != "wan":
        codes.add(ADALN_CODE)
    prompts = PROMPTS[:2]
    eager_python = _python_calls(codes, lambda: _sample(backend, "dynamic", prompts[0], False, size))
    eager = [_sample(backend, "dynamic", prompt, False, size) for prompt in prompts]
    before = compile_count()
    compiled, counts = [_sample(backend, "dynamic", prompts[0], True, size)], [compile_count() - before]
    results, recorded = {}, []
    backend.predict = _recording(backend.predict, recorded)  # a per-token call of the run, for the oracle test
    try:
        compiled_python = _python_calls(codes, lambda: results.update(_sample(backend, "dynamic", prompts[1], True,
                                                                               size)))
    finally:
        del backend.predict
    compiled.append(results)
    counts.append(compile_count() - before)
    assert not counters["graph_break"], f"graph breaks: {dict(counters['graph_break'])}"
    return backend, eager, compiled, counts, eager_python, compiled_python, recorded[0]


def _recording(predict, recorded: list):
    """``predict``, keeping the inputs and output of the last per-token call with several distinct states
    (a mask in place): the very call the compiled run made, with no new shape to compile."""
    def wrapper(latents, states, text, uniform, *args, **kwargs):
        out = predict(latents, states, text, uniform, *args, **kwargs)
        if not uniform and len(states[0].unique()) > 1:
            recorded[:] = [(latents, states, text, kwargs.get("sync_state"), out.clone())]
        return out

    return wrapper


def test_transformer_per_token_calls_run_compiled(transformer_runs):
    """asyndm's per-token calls go through the compiled blocks: after the first batch neither the blocks'
    forward nor SD3's and Flux's per-token AdaLN runs as Python (eagerly they run in every call)."""
    _, _, _, _, eager_python, compiled_python, _ = transformer_runs
    assert all(eager_python.values()), eager_python
    assert not any(compiled_python.values()), compiled_python


def test_transformer_compiled_latents_equal_eager_with_no_recompiles(transformer_runs):
    """dm, dm_concave and asyndm compiled within 1e-3 of eager; the second prompt (other items and
    tokens, other distinct timesteps per call) compiles nothing."""
    backend, eager, compiled, counts, _, _, _ = transformer_runs
    assert backend.compiled == "default"
    for reference, result in zip(eager, compiled):
        for name in VARIANTS:
            close = (result[name] - reference[name]).abs() <= 1e-3 * reference[name].abs()
            assert close.float().mean() >= 0.995, name
        assert (result["masks"] == reference["masks"]).float().mean() >= 0.99
    assert counts[0] > 0 and counts[1] == counts[0], counts


@torch.no_grad()
def test_compiled_per_token_call_equals_an_independent_forward(transformer_runs):
    """A compiled per-token call of the run (masks in place) against the forwards written in the tests
    from the models' weights: tests/test_mmdit_oracle.py's for SD3 and Flux, tests/test_wan.py's for Wan."""
    backend, *_, (latents, states, text, sync_state, ours) = transformer_runs
    repeats = backend.repeats(latents, states)  # [negative; positive] rows read the same map
    image_t = backend.model_timesteps(states).repeat(repeats, 1, 1)
    if backend.family == "wan":
        from test_wan import independent_forward

        expected = independent_forward(backend.transformer, latents, image_t.flatten(1),
                                       text.tensors["encoder_hidden_states"])
    else:
        from test_mmdit_oracle import _text_timesteps, oracle

        text_t = _text_timesteps(backend, float(sync_state), states).repeat(repeats)
        expected = oracle(backend, latents, text, image_t, text_t)
    torch.testing.assert_close(ours, expected, rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("folder", ["tiny_path", "tiny_sd3_path", "tiny_flux_path"])
def test_compiled_on_cuda_equals_eager_with_no_recompiles(request, folder):
    """The same checks on CUDA (scripts/gpu_check.sh runs them): compiled dm, dm_concave and asyndm within
    1e-3 of eager in true fp32 (TF32 off: it rounds at 1e-3 per op), no graph after the first prompt."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        torch._dynamo.reset()
        backend = load_backend(str(request.getfixturevalue(folder)), torch.device("cuda"), torch.float32)
        prompts = PROMPTS[:2]
        eager = [_sample(backend, "dynamic", prompt, False) for prompt in prompts]
        before, counts, compiled = compile_count(), [], []
        for prompt in prompts:
            compiled.append(_sample(backend, "dynamic", prompt, True))
            counts.append(compile_count() - before)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    for reference, result in zip(eager, compiled):
        for name in VARIANTS:
            close = (result[name] - reference[name]).abs() <= 1e-3 * reference[name].abs()
            assert close.float().mean() >= 0.995, name
    assert counts[0] > 0 and counts[1] == counts[0], counts
