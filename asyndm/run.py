"""One run: config → prompts and items → model → AsyncPipeline → images, latents, masks and manifest.

Resumable: an image counts as done when every file asked of it is verified (its size and checksum as
the manifest recorded them, or where none is recorded, it reads back whole), and a batch is sampled
again only for the variants that miss a file or (where timesteps.csv was damaged) a trace. Batches
are fixed by (prompt, batch_size), and each image has its own generator, so a resumed run gives the
same files as an uninterrupted one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from evaluation import registry
from evaluation.pipeline import run_after_sampling

from . import config as config_mod
from .callbacks import TimestepTrace
from .errors import ConfigError, PromptError
from .history import invocation
from .capabilities import check_variants
from .compilation import compile_problem
from .models import backend_options, load_backend, resolve_device, resolve_dtype
from .sources import backend_class, model_source
from .oracle import load_oracle
from .outputs import frame_overlays, key_frames, mask_overlay, save_array, save_image, save_video, video_format
from .pipeline import AsyncPipeline
from .plan import (
    ImageJob,
    has_masks,
    item_token_mode,
    load_run_prompts,
    manifest_rows,
    missing_variants,
    plan_batches,
    shard_batches,
)
from .resume import check_resumable
from .run_folder import (
    TIMESTEP_COLUMNS,
    atomic_write_bytes,
    frame_file,
    image_file,
    latent_file,
    manifest_name,
    mask_file,
    mask_video_file,
    read_table,
    recorded_files,
    timesteps_name,
    video_file,
    write_table,
)
from .sampler import SamplingSettings
from .sweep import sweep_job
from .variants import oracle_variants, ordered

log = logging.getLogger(__name__)


def sampling_settings(cfg: DictConfig) -> SamplingSettings:
    """The settings that decide the images, from the run's config: every ``sample.*``, ``curve.*`` and
    ``mask.*`` key the sampler has a field for, by name (SamplingSettings.from_config)."""
    plain = lambda node: OmegaConf.to_container(node, resolve=True)  # noqa: E731
    return SamplingSettings.from_config(
        plain(cfg.sample), plain(cfg.curve), plain(cfg.mask),
        generator_device=config_mod.generator_device(cfg),  # auto resolved (asyndm/devices.py)
        variant_options=plain(cfg.get("variant") or {}),  # asyndm/options/
        show_progress=cfg.progress,
    )


def sample_run(cfg: DictConfig, run_dir: Path) -> pd.DataFrame:
    """Sample every missing image of the run into ``run_dir``; returns the manifest."""
    config_mod.validate(cfg)
    specs = load_run_prompts(cfg)
    source = model_source(cfg.model)
    cfg_hash = config_mod.config_hash(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    semantics = config_mod.sampler_semantics(cfg)
    check_resumable(run_dir, cfg_hash, config_mod.generator_device(cfg), semantics, cfg)

    # Everything that can fail without weights fails here: the family (and what the variants need of it),
    # then every prompt's items.
    backend_cls = backend_class(source)
    check_variants(cfg.variants, backend_cls)  # what each variant's rule needs of the family
    if cfg.sample.get("compile") and (problem := compile_problem(backend_cls)):
        raise ConfigError(problem)
    try:  # the image size and mask grid, and the family's own settings (model.num_frames ...), from the configs
        backend_cls.check_sizes(source, cfg.sample.get("height"), cfg.sample.get("width"), cfg.mask.resolution)
        backend_cls.check_options(source, backend_options(cfg.model))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    token_mode = item_token_mode(cfg)
    evaluators = cfg.get("eval")
    evaluators = OmegaConf.to_container(evaluators, resolve=True) if OmegaConf.is_config(evaluators) else {}
    for name, settings in (evaluators or {}).items():
        try:  # each evaluator's weights can be had (or are downloaded now), before any image is sampled
            registry.check(name, settings)
        except (ValueError, FileNotFoundError, KeyError) as err:
            raise ConfigError(" ".join(str(err).strip("'\"").split())) from None
    oracle = load_oracle(cfg.prompts.oracle_masks) if oracle_variants(cfg.variants) else None
    resolve_items = backend_cls.item_resolver(source)
    for spec in specs:
        try:
            resolve_items(spec.prompt, spec.items, spec.legacy_item_idx, token_mode)
        except PromptError as error:  # name the file and line of the prompt (or the override)
            raise PromptError(f"{spec.where}: {error}" if spec.where else str(error)) from None

    variants = ordered(cfg.variants)
    s = cfg.sample
    batches = plan_batches(specs, s.images_per_prompt, s.batch_size, cfg.seed)
    batches = shard_batches(batches, cfg.shard.index, cfg.shard.count)  # global image_idx and seeds
    manifest_path = run_dir / manifest_name(cfg.shard.index, cfg.shard.count)
    device = resolve_device(cfg.device)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.update(config_hash=cfg_hash, sampler_semantics=semantics,
                    rule_revisions=dict(config_mod.RULE_REVISIONS),
                    resolved_device=str(device), generator_device=config_mod.generator_device(cfg),
                    model_source=source)
    atomic_write_bytes(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)).encode())

    records = recorded_files(run_dir, manifest_path.name)  # what each file was when written: a resume verifies it
    trace_path = run_dir / timesteps_name(cfg.shard.index, cfg.shard.count)
    trace = read_trace(run_dir, trace_path, cfg.shard.count)
    traced = complete_traces(trace)

    def to_sample(batch: list[ImageJob]) -> list[str]:
        """Variants with a file to write, or (where the trace table is damaged) a trace to record again."""
        missing = set(missing_variants(run_dir, batch, variants, cfg.save, records))
        if traced is not None:
            missing |= {v for v in variants if any((job.image_idx, v) not in traced for job in batch)}
        return [v for v in variants if v in missing]

    todo = [b for b in batches if to_sample(b)]
    log.info("run folder %s: %d of %d batches to sample", run_dir, len(todo), len(batches))
    if todo:
        backend = load_backend(source, device, resolve_dtype(cfg.precision), **backend_options(cfg.model))
        pipe = AsyncPipeline(backend, source)
        settings = sampling_settings(cfg)
        for batch in tqdm(todo, desc="batches", disable=not cfg.progress):
            written, rows = sample_batch(pipe, batch, to_sample(batch), settings, token_mode, cfg.save, run_dir,
                                         records, oracle)
            for name in written:  # recorded again, as now written
                records.pop(name, None)
            trace = update_timesteps(trace_path, trace, rows)
            write_table(manifest_path, manifest_rows(run_dir, batches, variants, cfg_hash, cfg.save, records))
    manifest = manifest_rows(run_dir, batches, variants, cfg_hash, cfg.save, records)
    write_table(manifest_path, manifest)
    return manifest


def sample_batch(pipe: AsyncPipeline, batch: list[ImageJob], variants: list[str], settings: SamplingSettings,
                 token_mode: str, save_cfg, run_dir: Path, records: dict | None = None,
                 oracle=None) -> tuple[list[str], pd.DataFrame]:
    """Sample ``variants`` for one batch of one prompt and write their missing files; returns the names
    written and the batch's timestep trace (one row per image, variant and step)."""
    trace = TimestepTrace()
    outputs = pipe.generate(batch[0].spec, [job.seed for job in batch], settings, variants, token_mode,
                            callbacks=[trace], oracle_masks=oracle)
    rows = [{"image_idx": batch[row.pop("position")].image_idx, "variant": variant, **row}
            for variant, out in outputs.items() for row in trace.rows(variant, out.masks)]
    written = []
    for variant, out in outputs.items():
        for position, (job, image) in enumerate(zip(batch, out.images)):
            if not missing_variants(run_dir, [job], [variant], save_cfg, records):
                continue  # verified before this run (resume): its files stay untouched
            if save_cfg.latents:
                written.append(latent_file(job.image_idx, variant))
                save_array(run_dir / written[-1], out.latents[position].float().cpu().numpy())
            if isinstance(image, list):  # a video model's frames (one frame: an image)
                image = save_frames(run_dir, job.image_idx, variant, image, out, position, save_cfg)
                if save_cfg.masks and has_masks(variant):
                    written.append(mask_file(job.image_idx, variant))  # the key frames' overlay, by save_frames
            elif save_cfg.masks and has_masks(variant):
                assignment = out.masks[position].cpu().numpy().astype(np.int64)
                written.append(mask_file(job.image_idx, variant))
                save_image(run_dir / written[-1], mask_overlay(image, assignment))
            written.append(image_file(job.image_idx, variant))
            save_image(run_dir / written[-1], image)  # last: the image marks it done
    return written, pd.DataFrame(rows, columns=TIMESTEP_COLUMNS)


def save_frames(run_dir: Path, image_idx: int, variant: str, frames: list, out, position: int, save_cfg):
    """A video's frames, its video and its mask (a mask video beside the key frames' overlays); returns what
    the image file holds: the first, middle and last frames side by side (a single frame: itself)."""
    video = len(frames) > 1
    extension = video_format()
    if video:
        for index, frame in enumerate(frames):
            save_image(run_dir / frame_file(image_idx, variant, index), frame)
        save_video(run_dir / video_file(image_idx, variant, extension), frames)
    if save_cfg.masks and has_masks(variant):
        assignment = out.masks[position].cpu().numpy().astype(np.int64)
        overlays = frame_overlays(frames, assignment, out.latents.shape[2])  # latents (B, C, F, h, w)
        if video:
            save_video(run_dir / mask_video_file(image_idx, variant, extension), overlays)
        save_image(run_dir / mask_file(image_idx, variant), key_frames(overlays))
    return key_frames(frames)


# --- timesteps.csv: per image, variant and step, the mean timestep of item and background pixels

def read_trace(run_dir: Path, path: Path, shard_count: int) -> pd.DataFrame | None:
    """The run's timestep trace so far: its table, or (an unsharded run in the folder its shards
    shared) theirs; None where there is none. A table that does not parse is said and read as empty,
    and a row cut short is left out (``read_table``): the images it lacks are sampled again for it."""
    paths = [path] if path.is_file() or shard_count > 1 else sorted(run_dir.glob("timesteps.shard-*-of-*.csv"))
    paths = [p for p in paths if p.is_file()]
    if not paths:
        return None
    frames = []
    for table in paths:
        try:
            frame = read_table(table)
            if list(frame.columns) != TIMESTEP_COLUMNS:
                raise ValueError(f"its columns are {list(frame.columns)[:8]}")
            frame = frame.astype({"image_idx": int, "variant": str, "step": int,
                                  "item_mean": float, "background_mean": float})
            if len(frame) and not table.read_bytes().endswith(b"\n"):  # cut: its last image may lack steps
                last = frame.iloc[-1]
                frame = frame[(frame.image_idx != last.image_idx) | (frame.variant != last.variant)]
        except (ValueError, TypeError, UnicodeDecodeError) as error:
            log.warning("%s cannot be read (%s); the images it traced are sampled again to rebuild it (their "
                        "files are kept)", table, " ".join(str(error).split())[:120])
            continue
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=TIMESTEP_COLUMNS)


def complete_traces(trace: pd.DataFrame | None) -> set[tuple[int, str]] | None:
    """(image_idx, variant) whose trace has every step: steps 0..n-1, n the longest of its variant."""
    if trace is None:
        return None
    counts = trace.groupby(["image_idx", "variant"]).step.agg(["nunique", "size", "max"]).reset_index()
    steps = counts.groupby("variant")["max"].transform("max") + 1
    whole = counts[(counts["nunique"] == steps) & (counts["size"] == steps)]
    return {(int(i), str(v)) for i, v in zip(whole.image_idx, whole.variant)}


def update_timesteps(path: Path, trace: pd.DataFrame | None, rows: pd.DataFrame) -> pd.DataFrame:
    """Write the trace with ``rows`` (a batch's) in place of those images' earlier rows; returns it."""
    if trace is not None and len(trace):
        keys = set(zip(rows.image_idx, rows.variant))
        trace = trace[[(i, v) not in keys for i, v in zip(trace.image_idx, trace.variant)]]
        rows = pd.concat([trace, rows], ignore_index=True)
    rows = rows.sort_values(["variant", "image_idx", "step"], kind="stable").reset_index(drop=True)
    write_table(path, rows)
    return rows


def run(cfg: DictConfig, run_dir: Path) -> pd.DataFrame | None:
    """Sampling, then evaluation and logging when the config asks for them.

    The run's status goes to status.json; in a multirun a failure is recorded there and returns
    None so that the other jobs and the sweep summary go on (asyndm/sweep.py).
    """
    config_mod.add_prompt_evaluators(cfg)
    manifest = None
    with sweep_job(run_dir, cfg), invocation(run_dir, config_mod.device_type(cfg)):
        manifest = sample_run(cfg, run_dir)
        if cfg.shard.count > 1:
            log.info("shard %d of %d done; scoring waits for the merge: python -m asyndm.shard OUT SHARD_DIR...",
                     cfg.shard.index, cfg.shard.count)
        elif cfg.get("eval") or cfg.logger.name != "none":
            run_after_sampling(run_dir, cfg)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return manifest
