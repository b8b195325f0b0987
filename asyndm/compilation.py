"""``sample.compile=true``: the model call compiled with ``torch.compile``, with no recompiles over a sweep.

The backend names its compile regions (SD/SDXL: the UNet's down, mid and up stages; SD3/Flux: the
transformer's repeated blocks, diffusers' ``_repeated_blocks``), and each is compiled in place with
``nn.Module.compile``, one graph per shape. What the method changes per call is kept out of what the
compiler guards on:

- per-pixel timesteps: hooks installed once and switched by a holder the call fills with tensors
  (asyndm/pixel_timesteps.py), never hooks or closures added per call;
- the UNet's mask capture: traced inside the stages, it only records each layer's probabilities;
  the prompt's items are weighed after the call (asyndm/attention.py);
- per-token timesteps (SD3, Flux): AdaLN wrappers installed once and switched by a holder
  (asyndm/token_timesteps.py); the embedding rows of the call's distinct timesteps, whose number
  changes every call, are the one dynamic size (``maybe_mark_dynamic``);
- the MMDiT joint-attention capture: traced inside the blocks, with the item weights padded to a
  fixed number of columns and the queries and keys computed again rather than recorded
  (asyndm/joint_attention.py);
- the baselines' capabilities (attention recording, query blur, latent gradients) add hooks for one
  use: the model runs eagerly inside them (``eager_while``).

Compiled regions stay compiled for the life of the model: the first batch compiles (warm-up), later
batches, prompts, steps and variants reuse the graphs (``tests/test_compilation.py`` counts them).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch

#: ``torch.compile`` modes a run may ask for (None: the default; "reduce-overhead": CUDA graphs)
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune")
#: specialisations per code object before dynamo gives up on it (its default: 8)
RECOMPILE_LIMIT = 64


#: the oldest torch whose compiler API this path uses (``torch.compiler.set_stance``)
MIN_TORCH = (2, 6)


def compile_problem(backend_cls) -> str | None:
    """Why ``sample.compile=true`` cannot run for this family and torch, or None: checked before the
    weights load."""
    if not hasattr(torch.compiler, "set_stance"):
        return (f"sample.compile=true needs torch >= {'.'.join(map(str, MIN_TORCH))} (this is {torch.__version__}): "
                f"upgrade torch, or set sample.compile=false")
    if not backend_cls.has_compiled_path():
        return f"sample.compile=true: the {backend_cls.family} family has no compiled path; set sample.compile=false"
    return None


def compile_regions(modules, mode: str | None = None) -> int:
    """Compile each module in place (``nn.Module.compile``); returns how many were compiled."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode {mode!r}: choose one of {', '.join(map(str, COMPILE_MODES))}")
    # a region's code serves every block of its class: one graph per shape, per plain / per-pixel call and
    # per captured or not, all made in the first batch; torch's default of 8 per code object would cut that
    # short on larger UNets and run the rest eagerly for good
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    count = 0
    for module in modules:
        module.compile(mode=mode, dynamic=False)  # one graph per shape: no symbolic shapes in the kernels
        count += 1
    if not count:
        raise ValueError("no compile regions found in this model")
    return count


@contextmanager
def eager():
    """Within the block, compiled regions run eagerly (hooks that come and go are then not traced)."""
    with torch.compiler.set_stance("force_eager"):
        yield


@contextmanager
def eager_while(manager, compiled):
    """``manager``, with compiled regions run eagerly inside it when ``compiled`` (else just ``manager``)."""
    with (eager() if compiled else nullcontext()), manager as value:
        yield value


def compile_count() -> int:
    """Graphs dynamo has compiled in this process so far (first compiles and recompiles alike)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
