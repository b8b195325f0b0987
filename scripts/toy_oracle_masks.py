"""AsynDM with oracle masks in the toy world: would slowing the right pixels help?

The attention masks of the toy model are poor early in sampling (docs/toy-world.md §5.2), so a null
result could be the masks' fault or the method's. Here the world answers it: each seed is first
sampled as `dm`, and the cells its final image paints in each item's colour become that item's
static mask (`fixed_assignment`) for `asyndm` on the same seed (same initial noise, so the layout
mostly carries over). Both are scored exactly (eval `shapes`), with paired 95% intervals.

This is an upper-bound diagnostic, not a method: the oracle needs the finished `dm` image.

    python scripts/toy_oracle_masks.py --seeds 10        # 40 prompts x 10 seeds, as experiment=toy_alignment
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from asyndm import AsyncPipeline  # noqa: E402
from asyndm.masks import BACKGROUND  # noqa: E402
from asyndm.prompts import load_prompts  # noqa: E402
from asyndm.sampler import SamplingSettings  # noqa: E402
from asyndm.shapes_world import parse_prompt  # noqa: E402
from evaluation.shapes import colour_cells, colour_labels, detect, score_image  # noqa: E402
from evaluation.summary import format_summary, summarize  # noqa: E402


def oracle_assignment(image, colours: list[str], item_k: list[float], latent: tuple[int, int]) -> torch.Tensor:
    """(h, w) item index per latent pixel: the cells painted in the item's colour; -1 elsewhere.

    Where two items share a colour, the cell goes to the larger k (ties: the first item), as the
    sampler resolves overlapping masks.
    """
    labels = colour_labels(image)
    assignment = torch.full(latent, BACKGROUND, dtype=torch.long)
    best = torch.full(latent, -1.0)
    for item, colour in enumerate(colours):
        cells = torch.from_numpy(colour_cells(labels, colour, latent))
        take = cells & (item_k[item] > best)
        assignment[take] = item
        best[take] = item_k[item]
    return assignment


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "models" / "toy"))
    parser.add_argument("--prompts", default=str(ROOT / "conf" / "prompts" / "shapes.jsonl"))
    parser.add_argument("--seeds", type=int, default=10, help="images per prompt (seeds seed, seed+1, ...)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--k", type=float, default=None, help="every item's k (default: each prompt's own)")
    parser.add_argument("--limit", type=int, default=None, help="first N prompts only")
    parser.add_argument("--out", default="outputs/analysis/oracle_masks")
    args = parser.parse_args(argv)

    specs = load_prompts(args.prompts, limit=args.limit, k=args.k)
    pipe = AsyncPipeline.from_pretrained(args.model, device="cpu")
    settings = SamplingSettings(steps=args.steps, guidance_scale=args.guidance)
    latent = pipe.backend.latent_size
    seeds = [args.seed + j for j in range(args.seeds)]

    rows = []
    for spec in specs:
        colours = [colour for colour, _shape, _count in parse_prompt(spec.prompt).objects][: len(spec.items)]
        dm_images = pipe.generate(spec, seeds, settings, ["dm"])["dm"].images
        oracle = torch.stack([oracle_assignment(img, colours, spec.k, latent) for img in dm_images])
        oracle_images = pipe.generate(spec, seeds, settings, ["asyndm"], masks=oracle)["asyndm"].images
        for variant, images in (("dm", dm_images), ("asyndm_oracle", oracle_images)):
            for seed, image in zip(seeds, images):
                for metric, value in score_image(detect(image), spec.prompt).items():
                    rows.append({"prompt_idx": spec.index, "seed": seed, "category": spec.category,
                                 "variant": variant, "metric": metric, "value": value})
        share = float((oracle >= 0).float().mean())
        print(f"{spec.prompt}: oracle masks cover {share:.0%} of the pixels", flush=True)

    results = pd.DataFrame(rows)
    summary = summarize(results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results.to_csv(out / "results.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    exact = summary[summary.metric == "shapes/exact"]
    print(f"\n{len(specs)} prompts x {len(seeds)} seeds; wrote {out}/results.csv and summary.csv\n")
    print(format_summary(exact, categories=True))
    return summary


if __name__ == "__main__":
    main()
