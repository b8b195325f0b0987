"""Log a scored run to Weights & Biases, keeping every wandb file inside the run folder.

wandb is optional for a run's results: they are already in results.csv and summary.csv, so any
wandb failure becomes a warning. wandb 0.31 writes under ~/.cache and ~/.local/share even when
offline unless all four of its directory variables are set (docs/PITFALLS.md), hence `_wandb_env`.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from pathlib import Path
from typing import Iterator

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from evaluation.io import grid_columns, mask_file, read_manifest

WANDB_DIR_VARS = ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR")


def resolve_mode(cfg_mode: str | None, environ=os.environ) -> str:
    """offline unless the user asked for online: logger.mode=online, WANDB_MODE, or an API key."""
    if cfg_mode in ("online", "disabled"):
        return cfg_mode
    if environ.get("WANDB_MODE"):
        return environ["WANDB_MODE"]
    if environ.get("WANDB_API_KEY"):
        return "online"
    return "offline"


@contextlib.contextmanager
def _wandb_env(run_dir: Path) -> Iterator[Path]:
    """Point every wandb directory into `run_dir/wandb`; restore the environment afterwards."""
    root = run_dir / "wandb"
    dirs = {"WANDB_DIR": run_dir, "WANDB_CACHE_DIR": root / "cache", "WANDB_DATA_DIR": root / "data",
            "WANDB_CONFIG_DIR": root / "config"}
    saved = {k: os.environ.get(k) for k in dirs}
    try:
        for key, path in dirs.items():
            Path(path).mkdir(parents=True, exist_ok=True)
            os.environ[key] = str(path)
        yield root
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def summary_metrics(summary: pd.DataFrame) -> dict[str, float]:
    """`{variant}/{metric}/mean` etc. for the overall (category `all`) rows of a summary."""
    out: dict[str, float] = {}
    for row in summary[summary["category"] == "all"].itertuples(index=False):
        for stat in ("mean", "std", "ci95_low", "ci95_high", "n", "diff_vs_dm_mean",
                     "diff_vs_dm_ci95_low", "diff_vs_dm_ci95_high"):
            value = float(getattr(row, stat))
            if not math.isnan(value):
                out[f"{row.variant}/{row.metric}/{stat}"] = value
    return out


def image_table_rows(run_dir: Path, results: pd.DataFrame | None,
                     limit: int) -> tuple[list[str], list[str], list[list]]:
    """(columns, image columns, rows) of the per-(prompt, seed) table; images as file paths or None.

    The image columns are the report grid's: every variant (dm first), then the masks of each
    variant that saved them (asyndm's column is ``mask``)."""
    manifest = read_manifest(run_dir)
    image_columns = grid_columns(run_dir, manifest)
    variants = [variant for _, kind, variant in image_columns if kind == "image"]
    masks = [(title, variant) for title, kind, variant in image_columns if kind == "mask"] or [("mask", "asyndm")]
    metrics = sorted(results["metric"].unique()) if results is not None and len(results) else []
    values = {}
    if metrics:
        values = results.set_index(["prompt_idx", "seed", "variant", "metric"])["value"].to_dict()
    columns = ["prompt_idx", "seed", "prompt", "category", *variants, *[title for title, _ in masks],
               *[f"{v}/{m}" for v in variants for m in metrics]]
    rows = []
    for (prompt_idx, seed), group in list(manifest.groupby(["prompt_idx", "seed"], sort=True))[:limit]:
        by_variant = dict(zip(group["variant"], group["file"]))
        first = group.iloc[0]
        mask_files = []
        for _, variant in masks:
            idx = group.loc[group["variant"] == variant, "image_idx"]
            mask = mask_file(run_dir, idx.iloc[0], variant) if len(idx) else None
            mask_files.append(str(mask) if mask is not None and mask.is_file() else None)
        row = [int(prompt_idx), int(seed), first["prompt"], first["category"],
               *[str(run_dir / by_variant[v]) if v in by_variant else None for v in variants],
               *mask_files,
               *[values.get((prompt_idx, seed, v, m), math.nan) for v in variants for m in metrics]]
        rows.append(row)
    return columns, [*variants, *[title for title, _ in masks]], rows


def log_run(run_dir: Path, cfg: DictConfig, summary: pd.DataFrame | None = None,
            results: pd.DataFrame | None = None, name: str | None = None, group: str | None = None) -> bool:
    """Log config, summary metrics and an image table of `run_dir`; True when wandb finished cleanly."""
    run_dir = Path(run_dir).resolve()
    logger = cfg.get("logger") or {}
    try:
        import wandb

        with _wandb_env(run_dir):
            run = wandb.init(
                project=logger.get("project") or "asyndm", entity=logger.get("entity"),
                group=group or logger.get("group"), name=name or logger.get("run_name") or run_dir.name,
                config=OmegaConf.to_container(cfg, resolve=True), dir=str(run_dir),
                mode=resolve_mode(logger.get("mode")), reinit="finish_previous")
            try:
                if summary is not None:
                    run.summary.update(summary_metrics(summary))
                    run.log({"summary": wandb.Table(dataframe=summary)})
                columns, image_cols, rows = image_table_rows(run_dir, results, int(logger.get("table_rows") or 64))
                table = wandb.Table(columns=columns)
                for row in rows:
                    table.add_data(*[wandb.Image(v) if c in image_cols and v else v
                                     for c, v in zip(columns, row)])
                run.log({"images": table})
            finally:
                run.finish()
        return True
    except Exception as error:  # noqa: BLE001 - results are safe on disk; wandb must not fail a run
        warnings.warn(f"wandb logging of {run_dir} failed ({type(error).__name__}: {error}); "
                      f"results.csv and summary.csv in the run folder are complete")
        return False
