"""The README's toy-world grid: per prompt category, the first prompts of a run at its first seed,
as dm | dm_concave | asyndm | asyndm's final mask, upscaled without smoothing.

    python scripts/toy_grid.py outputs/demo docs/toy-world-grid.png     # after `make demo`
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

from asyndm.run_folder import mask_file
from evaluation.io import read_manifest

COLUMNS = ("dm", "dm_concave", "asyndm", "mask")


def toy_grid(run_dir: Path, per_category: int = 2, scale: int = 4, label: int = 16) -> Image.Image:
    manifest = read_manifest(run_dir)
    first = manifest[manifest.seed == manifest.seed.min()]
    prompts = first.drop_duplicates("prompt_idx").groupby("category", sort=False).head(per_category)
    cell = None
    rows = []
    for row in prompts.itertuples():
        files = first[first.prompt_idx == row.prompt_idx].set_index("variant")
        tiles = [Image.open(run_dir / files.loc[v, "file"]).convert("RGB") for v in COLUMNS[:3]]
        tiles.append(Image.open(run_dir / mask_file(int(files.loc["asyndm", "image_idx"]))).convert("RGB"))
        cell = cell or (tiles[0].width * scale, tiles[0].height * scale)
        rows.append((f"{row.category}: {row.prompt}", [t.resize(cell, Image.NEAREST) for t in tiles]))
    if not rows:
        raise ValueError(f"{run_dir} has no images")
    grid = Image.new("RGB", (cell[0] * len(COLUMNS), label + len(rows) * (label + cell[1])), "white")
    draw = ImageDraw.Draw(grid)
    for c, title in enumerate(COLUMNS):
        draw.text((c * cell[0] + 4, 2), title, fill="black")
    for r, (text, tiles) in enumerate(rows):
        top = label + r * (label + cell[1])
        draw.text((4, top + 2), text, fill="black")
        for c, tile in enumerate(tiles):
            grid.paste(tile, (c * cell[0], top + label))
    return grid


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a toy-world run with save.masks=true (make demo's outputs/demo)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-category", type=int, default=2)
    args = parser.parse_args(argv)
    toy_grid(args.run_dir, args.per_category).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
