"""Reading a run folder's tables for evaluation (its schema: asyndm/run_folder.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from asyndm.run_folder import MANIFEST_REQUIRED, RESULT_COLUMNS, mask_file, read_table
from evaluation.variants import order_variants


def _read_csv(path: Path) -> pd.DataFrame:
    # keep_default_na=False: an empty category stays "", and a prompt "None" stays a string.
    return read_table(path, keep_default_na=False, na_values={"value": ["", "nan", "NaN"]})


def read_manifest(run_dir: Path) -> pd.DataFrame:
    """The sampler's manifest.csv, checked for the columns evaluation needs."""
    path = Path(run_dir) / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a sampling run folder "
                                f"(run `asyndm ...` first, or pass the folder that holds manifest.csv)")
    manifest = _read_csv(path)
    missing = [c for c in MANIFEST_REQUIRED if c not in manifest.columns]
    if missing:
        raise ValueError(f"{path} lacks columns {missing}; it has {list(manifest.columns)}")
    manifest["category"] = manifest["category"].astype(str)
    manifest["prompt"] = manifest["prompt"].astype(str)
    return manifest


def mask_column_title(variant: str) -> str:
    """asyndm's mask column is ``mask``; any other variant's is ``<variant> mask``. Titles do not
    depend on which other variants ran, so wandb tables of different runs line up."""
    return "mask" if variant == "asyndm" else f"{variant} mask"


def grid_columns(run_dir: Path, manifest: pd.DataFrame, limit: int | None = None) -> list[tuple[str, str]]:
    """(title, column) per column of the report's grid and the wandb table: every variant's image
    (dm first; column = the variant), then a mask column (column = ``mask:<variant>``) for each
    variant that saved mask pictures among its first `limit` images (all when None)."""
    variants = order_variants(manifest["variant"])
    columns = [(v, v) for v in variants]
    for v in variants:
        idx = manifest.loc[manifest["variant"] == v, "image_idx"]
        if limit is not None:
            idx = idx.head(limit)
        if any(mask_files(run_dir, i, [v]) for i in idx):
            columns.append((mask_column_title(v), f"mask:{v}"))
    return columns


def read_results(run_dir: Path) -> pd.DataFrame:
    """results.csv of a run, or an empty table with its columns."""
    path = Path(run_dir) / "results.csv"
    if not path.is_file():
        return pd.DataFrame({c: pd.Series(dtype=float if c == "value" else object) for c in RESULT_COLUMNS})
    results = _read_csv(path)
    results["category"] = results["category"].astype(str)
    results["prompt"] = results["prompt"].astype(str)
    results["value"] = results["value"].astype(float)
    return results


def mask_files(run_dir: Path, image_idx: int, variants: list[str]) -> dict[str, Path]:
    """variant -> masks/{image_idx:05}_{variant}.png for those of `variants` that saved a mask picture."""
    found = {v: Path(run_dir) / mask_file(int(image_idx), v) for v in variants}
    return {v: p for v, p in found.items() if p.is_file()}
