"""Score every image of a run folder with the configured evaluators into results.csv.

results.csv is a long table (one row per image and metric) written after every batch, so an
interrupted run resumes where it stopped. results.meta.json keeps the config each evaluator ran
with; when it changes, that evaluator's metrics are recomputed instead of mixed.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from evaluation import registry
from evaluation.io import (RESULT_COLUMNS, atomic_write_csv, atomic_write_json, read_manifest,
                           read_results)

META_FILE = "results.meta.json"
DEFAULT_CHUNK = 32


def _canonical(cfg: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(cfg, sort_keys=True, default=str))


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


def score_run(run_dir: Path, eval_cfg: dict[str, dict], chunk_size: int | None = None) -> pd.DataFrame:
    """Score all images of `run_dir` with each evaluator of `eval_cfg` (name -> config); returns results.

    Metrics already in results.csv for an image (from the same evaluator config) are kept, not
    recomputed. Images are loaded and scored `chunk_size` at a time (default: the evaluator's
    batch_size), and results.csv is rewritten atomically after each chunk.
    """
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    check_images_exist(run_dir, manifest)
    results = read_results(run_dir)
    meta_path = run_dir / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}

    for name, cfg in (eval_cfg or {}).items():
        cfg = _canonical(dict(cfg or {}))
        metrics = registry.metric_names(name, cfg)
        if name in meta and meta[name] != cfg:
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

        evaluator = registry.build(name, cfg)
        step = int(chunk_size or cfg.get("batch_size") or DEFAULT_CHUNK)
        for start in range(0, len(todo), step):
            rows = todo.iloc[start:start + step]
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
            atomic_write_csv(_sorted(results), run_dir / "results.csv")
            atomic_write_json(meta, meta_path)

    results = _sorted(results)
    atomic_write_csv(results, run_dir / "results.csv")
    atomic_write_json(meta, meta_path)
    return results
