"""One run: config → prompts and items → model → sampler → images, latents, masks and manifest.

Resumable: an image counts as done when every file asked of it exists (all writes are atomic), and
a batch is sampled again only for the variants that still miss a file. Batches are fixed by
(prompt, batch_size), and each image has its own generator, so a resumed run gives the same files
as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from . import config as config_mod
from .errors import ConfigError
from .models import load_model, load_tokenizer, model_source, resolve_device, resolve_dtype
from .outputs import MANIFEST_COLUMNS, mask_overlay, save_array, save_image, write_table
from .prompts import PromptSpec, load_prompts
from .sampler import VARIANTS, AsyncSampler, SamplingSettings
from .shard import manifest_name, shard_batches
from .sweep import sweep_job
from .tokens import item_token_positions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageJob:
    """One image index of one prompt; every variant of it shares the seed."""

    image_idx: int
    spec: PromptSpec
    seed: int


def image_file(image_idx: int, variant: str) -> str:
    return f"images/{image_idx:05}_{variant}.png"


def latent_file(image_idx: int, variant: str) -> str:
    return f"latents/{image_idx:05}_{variant}.npy"


def mask_file(image_idx: int) -> str:
    return f"masks/{image_idx:05}_asyndm.png"


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
    if save_cfg.masks and variant == "asyndm":
        files.append(mask_file(job.image_idx))
    return files


def missing_variants(run_dir: Path, batch: list[ImageJob], variants: list[str], save_cfg) -> list[str]:
    return [
        v for v in variants if any(not (run_dir / f).is_file() for job in batch for f in files_for(job, v, save_cfg))
    ]


def manifest_rows(run_dir: Path, batches: list[list[ImageJob]], variants: list[str], cfg_hash: str) -> pd.DataFrame:
    rows = []
    for batch in batches:
        for job in batch:
            for variant in variants:
                if (run_dir / image_file(job.image_idx, variant)).is_file():
                    rows.append(
                        {
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
                    )
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def check_resumable(run_dir: Path, cfg_hash: str) -> None:
    """A folder may only be resumed by a run with the same image-deciding settings."""
    saved = run_dir / "config.yaml"
    if saved.is_file():
        previous = OmegaConf.load(saved).get("config_hash")
        if previous is not None and previous != cfg_hash:
            raise ConfigError(
                f"run folder {run_dir} holds a run with other settings (config hash {previous}, now {cfg_hash}); "
                f"use another run_dir=... or remove the folder"
            )


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


def sample_run(cfg: DictConfig, run_dir: Path) -> pd.DataFrame:
    """Sample every missing image of the run into ``run_dir``; returns the manifest."""
    config_mod.validate(cfg)
    specs = load_run_prompts(cfg)
    source = model_source(cfg.model)
    cfg_hash = config_mod.config_hash(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    check_resumable(run_dir, cfg_hash)

    tokenizer = load_tokenizer(source)
    positions = {spec.index: item_token_positions(tokenizer, spec, cfg.prompts.item_tokens) for spec in specs}

    variants = [v for v in VARIANTS if v in cfg.variants]
    s = cfg.sample
    batches = plan_batches(specs, s.images_per_prompt, s.batch_size, cfg.seed)
    batches = shard_batches(batches, cfg.shard.index, cfg.shard.count)  # global image_idx and seeds
    manifest_path = run_dir / manifest_name(cfg.shard.index, cfg.shard.count)
    device = resolve_device(cfg.device)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.update(config_hash=cfg_hash, resolved_device=str(device), model_source=source)
    from .outputs import atomic_write_bytes  # noqa: PLC0415 - local to keep the import list short

    atomic_write_bytes(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)).encode())

    todo = [b for b in batches if missing_variants(run_dir, b, variants, cfg.save)]
    log.info("run folder %s: %d of %d batches to sample", run_dir, len(todo), len(batches))
    if todo:
        bundle = load_model(source, device, resolve_dtype(cfg.precision))
        settings = SamplingSettings(
            steps=s.steps,
            eta=s.eta,
            guidance_scale=s.guidance_scale,
            negative_prompt=s.negative_prompt,
            curve=cfg.curve.name,
            mask_mode=cfg.mask.name,
            mask_threshold=cfg.mask.threshold,
            mask_resolution=cfg.mask.resolution,
            show_progress=cfg.progress,
        )
        sampler = AsyncSampler(bundle, settings)
        for batch in tqdm(todo, desc="batches", disable=not cfg.progress):
            sample_batch(sampler, batch, missing_variants(run_dir, batch, variants, cfg.save), positions, cfg, run_dir)
            write_table(manifest_path, manifest_rows(run_dir, batches, variants, cfg_hash))
    manifest = manifest_rows(run_dir, batches, variants, cfg_hash)
    write_table(manifest_path, manifest)
    return manifest


def sample_batch(sampler: AsyncSampler, batch: list[ImageJob], variants: list[str], positions, cfg, run_dir: Path):
    """Sample ``variants`` for one batch of one prompt and write their files."""
    spec = batch[0].spec
    seeds = [job.seed for job in batch]
    tokens = positions[spec.index]
    embeddings = sampler.encode(spec.prompt, len(batch))
    results = {}
    static_mask = None
    if "asyndm" in variants and sampler.settings.mask_mode == "static":
        # Static masks come from the dm pass of the same seeds (§6); its images are dm's own.
        dm = sampler.sample_variant("dm", embeddings, seeds, tokens, spec.k, capture=True)
        static_mask = dm.assignment
        results["dm"] = dm
    for variant in variants:
        if variant not in results:
            fixed = static_mask if variant == "asyndm" else None
            results[variant] = sampler.sample_variant(variant, embeddings, seeds, tokens, spec.k, fixed_assignment=fixed)
    for variant in variants:
        result = results[variant]
        images = sampler.decode(result.latents)
        for position, (job, image) in enumerate(zip(batch, images)):
            if not missing_variants(run_dir, [job], [variant], cfg.save):
                continue  # finished before this run (resume): its files stay untouched
            if cfg.save.latents:
                save_array(run_dir / latent_file(job.image_idx, variant), result.latents[position].float().cpu().numpy())
            if cfg.save.masks and variant == "asyndm":
                assignment = result.assignment[position].cpu().numpy().astype(np.int64)
                save_image(run_dir / mask_file(job.image_idx), mask_overlay(image, assignment))
            save_image(run_dir / image_file(job.image_idx, variant), image)  # last: the image marks it done


def run(cfg: DictConfig, run_dir: Path) -> pd.DataFrame | None:
    """Sampling, then evaluation and logging when the config asks for them.

    The run's status goes to status.json; in a multirun a failure is recorded there and returns
    None so that the other jobs and the sweep summary go on (asyndm/sweep.py).
    """
    manifest = None
    with sweep_job(run_dir, cfg):
        manifest = sample_run(cfg, run_dir)
        if cfg.shard.count > 1:
            log.info("shard %d of %d done; scoring waits for the merge: python -m asyndm.shard OUT SHARD_DIR...",
                     cfg.shard.index, cfg.shard.count)
        elif cfg.get("eval") or cfg.logger.name != "none":
            from evaluation.pipeline import run_after_sampling

            run_after_sampling(run_dir, cfg)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return manifest
