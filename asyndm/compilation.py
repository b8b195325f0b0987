"""``sample.compile=true``: the model call compiled with ``torch.compile``, with no recompiles over a sweep.

The backend names its compile regions (SD/SDXL: the UNet's down, mid and up stages; SD3/Flux: the
transformer's repeated blocks, diffusers' ``_repeated_blocks``), and each is compiled in place with
``nn.Module.compile``. Everything the method changes per call is made stable for the compiler:

- what varies per call enters the regions as tensors read from one holder that stays installed
  (per-pixel timesteps: permanent hooks on the ResNet blocks, switched by the holder; per-token
  timesteps: the AdaLN wrappers likewise), never as hooks or closures added per call;
- the attention capture for masks runs eagerly (its ``__call__`` is ``torch.compiler.disable``-d),
  so per-prompt item counts, per-step stores and new processors per variant are not traced;
- the baselines' capabilities (attention recording, query blur, latent gradients) run the model
  eagerly (``eager()``), since their hooks come and go with each use.

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
