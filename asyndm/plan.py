"""A run's plan: which images exist, under which names and seeds, and which are still missing.

Shared by sampling (asyndm/run.py), sharding and merging (asyndm/shard.py) and sweeps, so none of
them imports another. Image j of prompt p has index p·n + j and seed ``seed + j`` (METHOD.md §7);
batches are fixed by (prompt, batch_size), so a resumed or sharded run writes the same files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from .run_folder import MANIFEST_COLUMNS, RECORD_PREFIXES, Record, file_names, image_file, latent_file, mask_file, record_of, verified
from .prompts import PromptSpec, load_prompts
from .variants import get_variant


@dataclass(frozen=True)
class ImageJob:
    """One image index of one prompt; every variant of it shares the seed."""

    image_idx: int
    spec: PromptSpec
    seed: int


def has_masks(variant: str) -> bool:
    """Variants whose item pixels follow their own curves have masks to save."""
    return get_variant(variant).schedule == "async"


def plan_batches(specs: list[PromptSpec], images_per_prompt: int, batch_size: int, seed: int) -> list[list[ImageJob]]:
    """Batches in run order: image j of prompt p has index p_pos·n + j and seed ``seed + j`` (§7).

    The last batch of a prompt holds the remainder when ``images_per_prompt`` is not a multiple.
    """
    batches = []
    for position, spec in enumerate(specs):
        jobs = [ImageJob(position * images_per_prompt + j, spec, seed + j) for j in range(images_per_prompt)]
        batches += [jobs[start : start + batch_size] for start in range(0, len(jobs), batch_size)]
    return batches


def files_for(job: ImageJob, variant: str, save_cfg) -> list[str]:
    files = [image_file(job.image_idx, variant)]
    if save_cfg.latents:
        files.append(latent_file(job.image_idx, variant))
    if save_cfg.masks and has_masks(variant):
        files.append(mask_file(job.image_idx, variant))
    return files


def missing_variants(run_dir: Path, batch: list[ImageJob], variants: list[str], save_cfg,
                     records: dict[str, Record] | None = None) -> list[str]:
    """The variants with a file of this batch that is absent or not the one written: its size and
    checksum differ from ``records`` (the manifest's), or, where none is recorded, it does not read back."""
    records = records or {}
    return [v for v in variants
            if any(not verified(run_dir / f, records.get(f)) for job in batch for f in files_for(job, v, save_cfg))]


def manifest_rows(run_dir: Path, batches: list[list[ImageJob]], variants: list[str], cfg_hash: str,
                  save_cfg=None, records: dict[str, Record] | None = None) -> pd.DataFrame:
    """One row per verified image (``missing_variants``' test), with the size and checksum of each of
    its files that is verified too; a file without a record is recorded as it is now (after it was
    written, or after it read back whole)."""
    records = records or {}
    rows = []
    for batch in batches:
        for job in batch:
            for variant in variants:
                if not verified(run_dir / image_file(job.image_idx, variant),
                                records.get(image_file(job.image_idx, variant))):
                    continue
                row = {
                    "image_idx": job.image_idx,
                    "prompt_idx": job.spec.index,
                    "prompt": job.spec.prompt,
                    "category": job.spec.category,
                    "items": json.dumps(job.spec.items),
                    "k": json.dumps(job.spec.k),
                    "seed": job.seed,
                    "variant": variant,
                    "file": image_file(job.image_idx, variant),
                    "config_hash": cfg_hash,
                }
                saved = set(files_for(job, variant, save_cfg)) if save_cfg is not None else {row["file"]}
                for prefix, name in file_names(job.image_idx, variant).items():
                    record = records.get(name)
                    if name in saved and verified(run_dir / name, record):
                        record = record or record_of(run_dir / name)
                    else:
                        record = None
                    row[f"{prefix}bytes"] = record.size if record else None
                    row[f"{prefix}sha256"] = record.sha256 if record else None
                rows.append(row)
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    for prefix in RECORD_PREFIXES:  # integers, blank where a file is not saved
        frame[f"{prefix}bytes"] = frame[f"{prefix}bytes"].astype("Int64")
    return frame


def load_run_prompts(cfg: DictConfig) -> list[PromptSpec]:
    """Every prompt of the run: a shard takes batches of the global plan, not prompts (asyndm/shard.py)."""
    return load_prompts(
        cfg.prompts.get("file"),
        cfg.prompts.get("items_file"),
        cfg.prompts.get("limit"),
        prompt=cfg.get("prompt"),
        items=OmegaConf.to_container(cfg["items"]) if cfg.get("items") is not None else None,  # cfg.items is dict.items
        k=OmegaConf.to_container(cfg.k) if OmegaConf.is_config(cfg.get("k")) else cfg.get("k"),
    )


def item_token_mode(cfg: DictConfig) -> str:
    """``prompts.item_tokens``, or where unset: the reference's legacy indices for its two-file
    format (METHOD.md §6), item words resolved by the tokenizer otherwise."""
    mode = cfg.prompts.get("item_tokens")
    if mode:
        return str(mode)
    return "legacy" if cfg.prompts.get("items_file") and not cfg.get("prompt") else "word"


# --- shards: batches i, i + n, i + 2n, ... of the global plan (asyndm/shard.py merges them)


def shard_batches(batches: list, index: int, count: int) -> list:
    """Batches ``index, index + count, ...`` of the global plan (round robin keeps shards even)."""
    return batches[index::count]
