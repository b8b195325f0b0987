"""Mask quality at each step in the toy world: do the item masks lie on the objects when AsynDM uses them?

AsynDM slows the pixels of each item's mask, and the mask of step s comes from that step's
cross-attention. In the shapes world the final image says exactly where each object is, so every
step's item map can be scored against it (docs/toy-world.md §5):

- peak inside: the map's maximum lies on a cell of the object;
- precision: the share of the binarised mask (map >= threshold x its mean, as the sampler does)
  that lies on the object, over non-empty masks;
- empty: the share of masks with no cell (a threshold above 1 empties flat maps: nothing is slowed);
- coverage: the share of the object's cells inside the mask;
- area: the mask's share of the cells;
- chance: the object's share of the cells (the precision of a mask placed at random).

An object's cells are the mask-grid cells holding a pixel of the item's named colour in the final
image; items whose colour is absent from the image are left out (and counted). Same-colour pairs
count both objects. Writes one CSV row per (variant, step) and prints a table.

    python scripts/toy_mask_quality.py --variants dm asyndm --seeds 4
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
from asyndm import AsyncPipeline  # noqa: E402
from asyndm.callbacks import RecordItemMaps  # noqa: E402
from asyndm.prompts import load_prompts  # noqa: E402
from asyndm.sampler import SamplingSettings  # noqa: E402
from asyndm.shapes_world import parse_prompt  # noqa: E402
from evaluation.shapes import colour_cells, colour_labels  # noqa: E402

def map_scores(item_map: np.ndarray, cells: np.ndarray, threshold: float) -> dict[str, float]:
    """Scores of one (g_h, g_w) attention map against one object's cells."""
    mask = item_map >= threshold * item_map.mean()
    on_object = (mask & cells).sum()
    return {
        "peak_inside": float(cells.flat[item_map.argmax()]),
        "precision": on_object / mask.sum() if mask.any() else float("nan"),
        "empty": float(not mask.any()),
        "coverage": on_object / cells.sum(),
        "area": mask.mean(),
        "chance": cells.mean(),
    }


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "models" / "toy"))
    parser.add_argument("--prompts", default=str(ROOT / "conf" / "prompts" / "shapes.jsonl"))
    parser.add_argument("--categories", nargs="+", default=["single", "two", "relation", "binding"])
    parser.add_argument("--variants", nargs="+", default=["dm", "asyndm"])
    parser.add_argument("--seeds", type=int, default=4, help="images per prompt (seeds seed, seed+1, ...)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--resolution", type=int, default=16, help="mask grid side (the toy model's 16x16 layers)")
    parser.add_argument("--threshold", type=float, default=1.0)
    parser.add_argument("--out", default="outputs/toy_mask_quality.csv")
    args = parser.parse_args(argv)

    specs = [s for s in load_prompts(args.prompts) if s.category in args.categories]
    if not specs:
        raise SystemExit(f"--categories {args.categories}: no prompt of {args.prompts} has these categories")
    pipe = AsyncPipeline.from_pretrained(args.model, device="cpu")
    settings = SamplingSettings(steps=args.steps, guidance_scale=args.guidance, mask_resolution=args.resolution,
                                mask_threshold=args.threshold)
    seeds = [args.seed + j for j in range(args.seeds)]
    grid = None

    rows, missing = [], 0
    for spec in specs:
        objects = parse_prompt(spec.prompt).objects
        recorder = RecordItemMaps()
        outputs = pipe.generate(spec, seeds, settings, args.variants, callbacks=[recorder])
        grid = recorder.grid
        for variant in args.variants:
            for b, image in enumerate(outputs[variant].images):
                labels = colour_labels(image)
                for item, (colour, _shape, _count) in enumerate(objects[: len(spec.items)]):
                    cells = colour_cells(labels, colour, grid)
                    if not cells.any():
                        missing += variant == args.variants[0]
                        continue
                    for step, maps in enumerate(recorder.maps[variant]):
                        item_map = maps[b, item].reshape(grid).numpy()
                        rows.append({"variant": variant, "step": step, "category": spec.category,
                                     **map_scores(item_map, cells, args.threshold)})
        print(f"{spec.prompt}: done", flush=True)

    table = pd.DataFrame(rows)
    summary = table.groupby(["variant", "step"]).mean(numeric_only=True).reset_index()
    counts = {v: int(n) for v, n in table[table.step == 0].groupby("variant").size().items()}
    summary["maps"] = summary.variant.map(counts)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    summary.to_csv(args.out, index=False)
    print(f"\n{len(specs)} prompts x {len(seeds)} seeds; items whose colour is absent from the "
          f"{args.variants[0]} image: {missing}; maps per variant: {counts}; threshold {args.threshold}, "
          f"grid {grid[0]}x{grid[1]}")
    shown = sorted({0, 2, 4, 6, 8, 10, 12, 16, 20, args.steps - 1} & set(range(args.steps)))
    for variant in args.variants:
        part = summary[summary.variant == variant].set_index("step").loc[shown]
        print(f"\n{variant}: step | " + " | ".join(str(s) for s in shown))
        for metric in ("peak_inside", "precision", "empty", "coverage", "area", "chance"):
            print(f"{metric:>12} | " + " | ".join(f"{v:.2f}" for v in part[metric]))
    print(f"\nwrote {args.out}")
    return summary


if __name__ == "__main__":
    main()
