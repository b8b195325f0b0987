"""What one sampling step's model call costs: plain, with per-cell timesteps, and with the mask capture.

The end-to-end benchmark (scripts/benchmark.py) times whole runs; this splits asyndm's extra cost
per step into its two parts: the per-cell (per-token, per-pixel) timestep path on a given map, and
the attention capture that makes the dynamic masks. A step is the family's own guidance rule at
``--guidance`` (SD, SD3: two passes batched; Flux-dev: one pass with the embedded scale), as the
benchmark runs it. Process CPU time (steadier than wall time on a shared machine), the three kinds
interleaved round by round, median over the rounds; on CUDA, wall time with a synchronise after each.

    python scripts/call_cost.py --model tiny_flux --resolution 256
    python scripts/call_cost.py --model tiny_sd3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from functools import partial

import torch

from benchmark import BUILT_IN, SHAPED, build_backend

from asyndm.models import resolve_device, resolve_dtype

PROMPT, ITEMS = "a cat eating a sandwich", ["cat", "sandwich"]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny_sd3", help=f"{' | '.join(BUILT_IN + tuple(SHAPED))} | a folder")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--guidance", type=float, default=5.0, help="the family's guidance scale (as the benchmark)")
    parser.add_argument("--resolution", type=int, default=None, help="image side in pixels (default: the model's)")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--distinct", type=int, default=6, help="distinct timesteps in the random map")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device, dtype = resolve_device(args.device), resolve_dtype(args.precision)
    backend = build_backend(args.model, device, dtype)
    height, width = (args.resolution, args.resolution) if args.resolution else backend.default_size
    batch = args.batch_size
    latents = backend.initial_latents([torch.Generator(device).manual_seed(i) for i in range(batch)], height, width)
    tokens = backend.item_tokens(PROMPT, ITEMS, None, "word")
    rule = backend.guidance_rule(args.guidance)  # the family's own: CFG (2 passes batched) or Flux's embedded scale
    cond = backend.encode(PROMPT, batch, "", rule.guided)
    timeline = backend.timeline(20)
    generator = torch.Generator().manual_seed(0)
    choices = timeline.sync_states[torch.randperm(len(timeline.sync_states), generator=generator)[: args.distinct]]
    grid = backend.map_shape(latents)
    states = choices.cpu()[torch.randint(0, len(choices), (batch, *grid), generator=generator)].to(device)
    capture = backend.item_attention(tokens, latents, None)

    def step(uniform: bool, attention=None):
        if not uniform:
            backend.announce(states)  # as the loop does, one call ahead
        rule(partial(backend.predict, uniform=uniform, attention=attention, sync_state=timeline.sync_states[0]),
             latents, states, cond)
        if attention is not None:
            attention.take()

    plain, per_cell = partial(step, True), partial(step, False)
    per_cell_and_capture = partial(step, False, capture)
    calls = {"plain": plain, "per_cell": per_cell, "per_cell_and_capture": per_cell_and_capture}
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    seconds = {name: [] for name in calls}
    with torch.no_grad(), capture:
        for round_ in range(args.rounds + 1):
            for name, call in calls.items():
                start = clock()
                call()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if round_ > 0:  # round 0 warms up
                    seconds[name].append(clock() - start)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    print(f"model={args.model} device={device} precision={args.precision} batch={batch} image={height}x{width} "
          f"distinct={args.distinct} rounds={args.rounds} threads={args.threads} torch={torch.__version__}")
    for name in calls:
        print(f"{name:<22}{median[name] * 1000:>10.2f} ms{median[name] / median['plain']:>8.3f}")
    summary = {"model": args.model, "device": str(device), "batch_size": batch, "resolution": height,
               **{f"{name}_ms": round(median[name] * 1000, 3) for name in calls},
               "per_cell_over_plain": round(median["per_cell"] / median["plain"], 4),
               "capture_over_plain": round((median["per_cell_and_capture"] - median["per_cell"]) / median["plain"], 4)}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
