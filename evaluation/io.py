"""Reading a run folder's tables for evaluation (its schema: asyndm/run_folder.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from asyndm.run_folder import MANIFEST_REQUIRED, RESULT_COLUMNS, mask_file, read_table
from evaluation.variants import order_variants

log = logging.getLogger(__name__)
# The columns of a result row that must match its image's row in the manifest.
IMAGE_KEYS = ["image_idx", "prompt_idx", "prompt", "category", "seed", "variant"]


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


def verified_results(run_dir: Path, manifest: pd.DataFrame) -> pd.DataFrame:
    """results.csv as far as it can be trusted, to resume scoring from: a table that does not parse is
    said and read as empty, and a row that does not match an image of ``manifest`` (its index, prompt,
    category, seed and variant), names no metric, or has a value that is not a number is left out. What
    is left out is scored again; it never becomes a metric."""
    path = Path(run_dir) / "results.csv"
    empty = read_results(Path(run_dir) / "no such folder")
    if not path.is_file():
        return empty
    try:
        raw = read_table(path, dtype=str, keep_default_na=False)
        if list(raw.columns) != RESULT_COLUMNS:
            raise ValueError(f"its columns are {list(raw.columns)[:8]}, not {RESULT_COLUMNS}")
    except (ValueError, UnicodeDecodeError) as error:
        log.warning("%s cannot be read (%s); every image is scored again", path, " ".join(str(error).split())[:120])
        return empty
    images = manifest[IMAGE_KEYS].astype(str)
    known = set(map(tuple, images.itertuples(index=False)))
    value = pd.to_numeric(raw["value"].replace({"": "nan"}), errors="coerce")
    usable = (pd.Series([tuple(r) in known for r in raw[IMAGE_KEYS].itertuples(index=False)], index=raw.index, dtype=bool)
              & (raw["metric"] != "") & (value.notna() | raw["value"].isin(["", "nan", "NaN"])))
    if not usable.all():
        log.warning("%s: %d of %d rows match no image of the manifest or are damaged; they are scored again",
                    path, int((~usable).sum()), len(raw))
    results = raw[usable].copy()
    results["value"] = value[usable]
    for column in ("image_idx", "prompt_idx", "seed"):
        results[column] = results[column].astype(manifest[column].dtype)
    return results.reset_index(drop=True)


def mask_files(run_dir: Path, image_idx: int, variants: list[str]) -> dict[str, Path]:
    """variant -> masks/{image_idx:05}_{variant}.png for those of `variants` that saved a mask picture."""
    found = {v: Path(run_dir) / mask_file(int(image_idx), v) for v in variants}
    return {v: p for v, p in found.items() if p.is_file()}
