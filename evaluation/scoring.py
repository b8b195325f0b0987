"""Score every image of a run folder with the configured evaluators into results.csv.

results.csv is a long table (one row per image and metric) written after every batch, so an
interrupted run resumes where it stopped. results.meta.json keeps the config each evaluator ran
with; when it changes, that evaluator's metrics are recomputed instead of mixed.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from asyndm.run_folder import RESULT_COLUMNS, atomic_write_json, frame_files, write_table
from evaluation import registry
from evaluation.io import read_manifest, verified_results

META_FILE = "results.meta.json"
DEFAULT_CHUNK = 32
# Settings that change where and how fast an evaluator runs, not its scores: changing them keeps results.
RUNTIME_KEYS = ("device", "batch_size")


def _canonical(cfg: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(cfg, sort_keys=True, default=str))


def _scored_by(cfg: dict[str, Any]) -> dict[str, Any]:
    """The part of an evaluator config that decides its scores."""
    return {k: v for k, v in cfg.items() if k not in RUNTIME_KEYS}


def with_run_device(cfg: dict[str, Any], device: str | None) -> dict[str, Any]:
    """`cfg` on the run's device when it has a `device` setting left at auto (an explicit one wins)."""
    if device and device != "auto" and cfg.get("device", None) == "auto":
        return {**cfg, "device": device}
    return cfg


def show_progress(enabled: bool = True) -> bool:
    """Progress bars only on a terminal: on Slurm or in a pipe they would fill the log with redraws."""
    return bool(enabled) and sys.stderr.isatty()


def quiet_library_bars() -> None:
    """Silence the weight-loading bars of transformers and huggingface_hub too (off a terminal)."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    disable_progress_bars()
    transformers_logging.disable_progress_bar()


def load_image(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def check_images_exist(run_dir: Path, manifest: pd.DataFrame) -> None:
    """Raise naming the missing files: a missing image is never skipped silently."""
    missing = [f for f in manifest["file"] if not (run_dir / f).is_file()]
    if missing:
        shown = ", ".join(str(run_dir / f) for f in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise FileNotFoundError(f"{len(missing)} image(s) listed in {run_dir / 'manifest.csv'} are missing: "
                                f"{shown}{more}. Resample the run or remove their rows from the manifest")


def _sorted(results: pd.DataFrame) -> pd.DataFrame:
    return results.sort_values(["metric", "image_idx", "variant"], kind="stable").reset_index(drop=True)[RESULT_COLUMNS]


def score_run(run_dir: Path, eval_cfg: dict[str, dict], chunk_size: int | None = None,
              device: str | None = None, progress: bool = True) -> pd.DataFrame:
    """Score all images of `run_dir` with each evaluator of `eval_cfg` (name -> config); returns results.

    Metrics already in results.csv for an image (from the same evaluator config, up to
    RUNTIME_KEYS) are kept, not recomputed. Images are loaded and scored `chunk_size` at a time
    (default: the evaluator's batch_size), and results.csv is rewritten atomically after each
    chunk. `device` (the run's) applies to evaluators whose own device is auto; `progress` shows a
    bar per evaluator when stderr is a terminal.
    """
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    check_images_exist(run_dir, manifest)
    results = verified_results(run_dir, manifest)
    meta_path = run_dir / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}

    for name, cfg in (eval_cfg or {}).items():
        cfg = _canonical(dict(cfg or {}))
        metrics = registry.metric_names(name, cfg)
        if name in meta and _scored_by(meta[name]) != _scored_by(cfg):
            stale = results["metric"].isin(metrics)
            if stale.any():
                warnings.warn(f"eval.{name} config changed since results.csv was written "
                              f"({meta[name]} -> {cfg}); recomputing {metrics}")
                results = results[~stale].reset_index(drop=True)
        meta[name] = cfg

        have = results[results["metric"].isin(metrics)].groupby(["image_idx", "variant"])["metric"].nunique()
        done = set(have[have == len(metrics)].index)
        todo = manifest[[(i, v) not in done for i, v in zip(manifest["image_idx"], manifest["variant"])]]
        if todo.empty:
            continue
        # Drop partial rows of the images about to be scored, so no (image, metric) appears twice.
        todo_keys = set(zip(todo["image_idx"], todo["variant"]))
        partial = results["metric"].isin(metrics) & pd.Series(
            [(i, v) in todo_keys for i, v in zip(results["image_idx"], results["variant"])], index=results.index, dtype=bool)
        results = results[~partial].reset_index(drop=True)

        if not show_progress(progress):
            quiet_library_bars()
        evaluator = registry.build(name, with_run_device(cfg, device))
        step = int(chunk_size or cfg.get("batch_size") or DEFAULT_CHUNK)
        bar = tqdm(total=len(todo), desc=f"eval.{name}", unit="image", disable=not show_progress(progress))
        for start in range(0, len(todo), step):
            rows = todo.iloc[start:start + step]
            if getattr(evaluator, "reads_frames", False):  # video metrics: every frame of each video
                images = [[load_image(path) for path in frame_files(run_dir, f)] for f in rows["file"]]
            else:
                images = [load_image(run_dir / f) for f in rows["file"]]
            scores = evaluator.score(images, rows["prompt"].tolist())
            if sorted(scores) != sorted(metrics):
                raise RuntimeError(f"evaluator eval.{name} returned metrics {sorted(scores)} but declares "
                                   f"{sorted(metrics)}; fix its metric_names()")
            new = []
            for metric in metrics:
                values = list(scores[metric])
                if len(values) != len(rows):
                    raise RuntimeError(f"evaluator eval.{name} returned {len(values)} values of {metric} "
                                       f"for {len(rows)} images")
                block = rows[["image_idx", "prompt_idx", "prompt", "category", "seed", "variant"]].copy()
                block["metric"] = metric
                block["value"] = [float(v) for v in values]
                new.append(block)
            results = pd.concat([results, *new], ignore_index=True) if len(results) else pd.concat(new, ignore_index=True)
            write_table(run_dir / "results.csv", _sorted(results))
            atomic_write_json(meta_path, meta)
            bar.update(len(rows))
        bar.close()

    results = _sorted(results)
    write_table(run_dir / "results.csv", results)
    atomic_write_json(meta_path, meta)
    return results
