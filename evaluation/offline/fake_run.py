"""A fake run folder in the sampler's output format, for tests and for trying reports offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from PIL import Image

VARIANTS = ("dm", "dm_concave", "asyndm")


def make_fake_run(run_dir: Path, prompts: list[str] | None = None, categories: list[str] | None = None,
                  seeds: tuple[int, ...] = (0, 1), variants: tuple[str, ...] = VARIANTS,
                  size: int = 32, masks: bool = True, config: dict | None = None) -> Path:
    """Write config.yaml, manifest.csv, random RGB images (and mask pictures) like the sampler does.

    Images of different variants with the same image_idx share prompt and seed, as in real runs.
    """
    run_dir = Path(run_dir)
    prompts = prompts or ["a cat eating a sandwich", "a dog playing basketball"]
    categories = categories or [""] * len(prompts)
    (run_dir / "images").mkdir(parents=True, exist_ok=True)
    if masks:
        (run_dir / "masks").mkdir(exist_ok=True)
    rng = np.random.default_rng(1234)
    rows = []
    image_idx = 0
    for prompt_idx, (prompt, category) in enumerate(zip(prompts, categories)):
        items = prompt.split()[1:2]
        for seed in seeds:
            for variant in variants:
                file = f"images/{image_idx:05}_{variant}.png"
                pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels, "RGB").save(run_dir / file)
                rows.append(dict(image_idx=image_idx, prompt_idx=prompt_idx, prompt=prompt, category=category,
                                 items=json.dumps(items), k=json.dumps([0.5] * len(items)), seed=seed,
                                 variant=variant, file=file, config_hash="fake0000"))
            for variant in variants:  # asyndm and the variants on its schedule (asyndm+cfgpp) save masks
                if masks and (variant == "asyndm" or variant.startswith("asyndm+")):
                    mask = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                    Image.fromarray(mask, "RGB").save(run_dir / f"masks/{image_idx:05}_{variant}.png")
            image_idx += 1
    pd.DataFrame(rows).to_csv(run_dir / "manifest.csv", index=False)
    base = {"model": {"name": "tiny"}, "curve": {"name": "concave"}, "mask": {"name": "cross_attention"},
            "prompts": {"name": "animal"}, "seed": 0, "sample": {"steps": 4, "images_per_prompt": len(seeds)},
            "variants": list(variants), "device": "auto", "eval": {}, "logger": {"name": "none"}}
    cfg = OmegaConf.merge(OmegaConf.create(base), OmegaConf.create(config or {}))
    OmegaConf.save(cfg, run_dir / "config.yaml")
    return run_dir
