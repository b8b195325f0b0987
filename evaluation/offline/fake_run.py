"""A fake run folder in the sampler's output format, for tests and for trying reports offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from PIL import Image

VARIANTS = ("dm", "dm_concave", "asyndm")
K = 0.5  # every item's k


def fake_timesteps(manifest: pd.DataFrame, num_steps: int, seed: int = 0) -> pd.DataFrame:
    """timesteps.csv rows as a run with the bin curve (k = 0.5, Y = 1000, o = 1) would write them:
    model call i sees the state after i + 1 steps. dm and any variant without masks: every pixel
    linear (dm) or concave (dm_concave), as background; asyndm: item pixels concave and the rest
    linear. A few timesteps of per-image jitter, as rounding and masks that grow give real runs.
    Written from the closed forms here (NumPy), not from asyndm.curves, so tests can compare."""
    rng = np.random.default_rng(seed)
    x = np.arange(1, num_steps + 1, dtype=float)
    linear = 1 + 1000 - 1000 * x / num_steps
    concave = 1 + K * (1000 - 1000 * x**2 / num_steps**2) + (1 - K) * (1000 - 1000 * x / num_steps)
    rows = []
    for image_idx, variant in manifest[["image_idx", "variant"]].drop_duplicates().itertuples(index=False):
        jitter = np.where(x < num_steps, rng.normal(0, 3, num_steps), 0.0)
        if variant == "asyndm":
            item, background = concave + jitter, linear - jitter
        else:
            item, background = np.full(num_steps, np.nan), (concave if variant == "dm_concave" else linear)
        rows += [dict(image_idx=image_idx, variant=variant, step=step, item_mean=item[step],
                      background_mean=background[step]) for step in range(num_steps)]
    return pd.DataFrame(rows)


def make_fake_run(run_dir: Path, prompts: list[str] | None = None, categories: list[str] | None = None,
                  seeds: tuple[int, ...] = (0, 1), variants: tuple[str, ...] = VARIANTS,
                  size: int = 32, masks: bool = True, config: dict | None = None,
                  timesteps: bool = True) -> Path:
    """Write config.yaml, manifest.csv, random RGB images (and mask pictures) like the sampler does,
    and timesteps.csv (``timesteps=False``: a folder from before runs recorded their timesteps).

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
                                 items=json.dumps(items), k=json.dumps([K] * len(items)), seed=seed,
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
    if timesteps:
        fake_timesteps(pd.DataFrame(rows), int(cfg.sample.steps)).to_csv(run_dir / "timesteps.csv", index=False)
    return run_dir
