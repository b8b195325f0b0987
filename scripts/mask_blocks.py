"""Which transformer blocks' joint attention to read masks from (``mask.blocks``): per block, what a capture
costs and what its masks look like, on an SD3 or Flux model.

For each block alone: the extra time of one model call that captures it (median over rounds, interleaved
with uncaptured calls), and over a dm pass: how peaked its item maps are (mean over items of the top-10 %
tokens' share of the map), how much the binarised mask changes from step to step, and its agreement
(IoU of item tokens) with the mask of all blocks together. Ground truth for localisation needs a trained
model and annotated images; on the random-weight tiny models these numbers describe noise, and only
the cost column carries over to real checkpoints.

    python scripts/mask_blocks.py --model tiny_sd3
    python scripts/mask_blocks.py --model tiny_flux --resolution 256
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from asyndm.callbacks import RecordItemMaps  # noqa: E402
from asyndm.masks import item_assignment  # noqa: E402
from asyndm.models import load_backend  # noqa: E402
from asyndm.sources import BUILT_IN_MODELS, built_in_source, check_source  # noqa: E402
from asyndm.sampler import AsyncSampler, SamplingSettings  # noqa: E402

PROMPT, ITEMS, K = "a cat eating a sandwich", ["cat", "sandwich"], [0.7, 0.7]


def block_maps(sampler, cond, seeds, tokens, blocks) -> torch.Tensor:
    """(steps, B, items, tokens) item maps of a dm pass captured on ``blocks``."""
    sampler.settings = SamplingSettings(**{**sampler.settings.__dict__, "mask_blocks": tuple(blocks)})
    recorder = RecordItemMaps()
    sampler.sample_variant("dm", cond, seeds, tokens, K, callbacks=[recorder])
    return torch.stack(recorder.maps["dm"])


def capture_cost(backend, tokens, latents, text, block, rounds) -> tuple[float, float]:
    """Median seconds of one uniform model call, and the extra seconds when it captures ``block``."""
    states = torch.full((len(latents), *backend.map_shape(latents)), 700.0, device=backend.device)
    plain, captured = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        backend.predict(latents, states, text, uniform=True)
        plain.append(time.perf_counter() - start)
        with backend.item_attention(tokens, latents, None, [block]) as attention:
            start = time.perf_counter()
            backend.predict(latents, states, text, uniform=True, capture_rows=slice(0, len(latents)),
                            attention=attention)
            captured.append(time.perf_counter() - start)
    return statistics.median(plain), statistics.median(captured) - statistics.median(plain)


@torch.no_grad()
def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny_sd3", help="a built-in model or an SD3 / Flux folder")
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    source = built_in_source(args.model) if args.model in BUILT_IN_MODELS else check_source(args.model)
    backend = load_backend(source, torch.device("cpu"), torch.float32)
    side = args.resolution or backend.default_size[0]
    settings = SamplingSettings(steps=args.steps, guidance_scale=3.5 if backend.family == "flux" else 5.0,
                                height=side, width=side)
    sampler = AsyncSampler(backend, settings)
    seeds = list(range(1234, 1234 + args.images))
    tokens = backend.item_tokens(PROMPT, ITEMS, None, "word")
    cond = sampler.encode(PROMPT, len(seeds), ["dm"])
    k_items = torch.tensor(K)
    grid = None
    layers = len(backend.joint_attention_layers)
    everything = block_maps(sampler, cond, seeds, tokens, range(layers))
    latents = backend.initial_latents(backend.generators(seeds), side, side)
    text = sampler.guidance("dm")._with_scale(cond.positive, len(seeds), "cpu") if backend.family == "flux" \
        else cond.positive
    grid = backend.map_shape(latents)

    def masks(maps):  # (steps, B, items, T) → (steps, B, h, w)
        return torch.stack([item_assignment(m.view(*m.shape[:2], *grid), k_items, 1.0) for m in maps])

    reference = masks(everything)
    rows = []
    for block in range(layers):
        maps = block_maps(sampler, cond, seeds, tokens, [block])
        top = maps.flatten(3).sort(dim=-1, descending=True).values
        peak = (top[..., : max(1, top.shape[-1] // 10)].sum(-1) / top.sum(-1)).mean().item()
        chosen = masks(maps)
        change = (chosen[1:] != chosen[:-1]).float().mean().item()
        items, all_items = chosen >= 0, reference >= 0
        iou = ((items & all_items).sum() / (items | all_items).sum().clamp(min=1)).item()
        call, cost = capture_cost(backend, tokens, latents, text, block, args.rounds)
        rows.append({"block": block, "capture_ms": round(1000 * cost, 2), "call_ms": round(1000 * call, 1),
                     "capture_share": round(cost / call, 3), "top10_share": round(peak, 3),
                     "mask_change_per_step": round(change, 3), "iou_with_all_blocks": round(iou, 3)})
        print(json.dumps(rows[-1]), flush=True)
    print(f"default mask.blocks: {backend.default_mask_blocks()} of {layers}")
    return rows


if __name__ == "__main__":
    main()
