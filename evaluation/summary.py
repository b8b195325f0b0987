"""Per variant and metric: mean with a Student-t 95% interval, and the paired gain over `dm`.

Variants of one (prompt_idx, seed) start from the same noise, so the paired difference
`variant - dm` on those pairs removes the prompt and seed variance that the two means share;
its interval is much tighter than comparing the two means.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

BASELINE = "dm"
ALL = "all"
VARIANT_ORDER = ("dm", "dm_concave", "asyndm")  # the paper's; the baselines and composed variants follow
SUMMARY_COLUMNS = ["variant", "metric", "category", "n", "mean", "std", "ci95_low", "ci95_high",
                   "n_pairs", "diff_vs_dm_mean", "diff_vs_dm_ci95_low", "diff_vs_dm_ci95_high"]


def mean_ci95(values) -> tuple[int, float, float, float, float]:
    """(n, mean, std, ci_low, ci_high) of finite values; std with ddof=1; NaN where n is too small."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return 0, math.nan, math.nan, math.nan, math.nan
    mean = float(x.mean())
    if n == 1:
        return 1, mean, math.nan, math.nan, math.nan
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return n, mean, std, mean - half, mean + half


def _variant_key(variant: str) -> tuple[int, int, str]:
    if variant in VARIANT_ORDER:
        return (0, VARIANT_ORDER.index(variant), variant)
    return (1 + ("+" in variant), 0, variant)


def order_variants(names) -> list[str]:
    """dm, dm_concave, asyndm, then the other variants (the baselines), then composed ones
    (asyndm+cfgpp), each group alphabetically: the order of every table, plot and grid."""
    return sorted(dict.fromkeys(names), key=_variant_key)


def _rows(results: pd.DataFrame, category: str) -> list[dict]:
    rows = []
    for metric, by_metric in results.groupby("metric", sort=True):
        base = by_metric[by_metric["variant"] == BASELINE]
        base = base.groupby(["prompt_idx", "seed"])["value"].mean()
        for variant in sorted(by_metric["variant"].unique(), key=_variant_key):
            cur = by_metric[by_metric["variant"] == variant]
            n, mean, std, low, high = mean_ci95(cur["value"])
            row = dict(variant=variant, metric=metric, category=category, n=n, mean=mean, std=std,
                       ci95_low=low, ci95_high=high, n_pairs=math.nan, diff_vs_dm_mean=math.nan,
                       diff_vs_dm_ci95_low=math.nan, diff_vs_dm_ci95_high=math.nan)
            if variant != BASELINE and len(base):
                paired = cur.groupby(["prompt_idx", "seed"])["value"].mean().to_frame("value").join(
                    base.rename("base"), how="inner")
                diff = (paired["value"] - paired["base"]).to_numpy()
                n_pairs, d_mean, _, d_low, d_high = mean_ci95(diff)
                row.update(n_pairs=n_pairs, diff_vs_dm_mean=d_mean, diff_vs_dm_ci95_low=d_low,
                           diff_vs_dm_ci95_high=d_high)
            rows.append(row)
    return rows


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """summary table of a results table (see module docstring); category `all` = every prompt.

    Rows per category are added when the run's prompts carry categories.
    """
    rows = _rows(results, ALL)
    categories = sorted(c for c in results["category"].astype(str).unique() if c not in ("", "nan"))
    for category in categories:
        rows += _rows(results[results["category"].astype(str) == category], category)
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    summary["n_pairs"] = summary["n_pairs"].astype(float)
    return summary


def format_summary(summary: pd.DataFrame, categories: bool = False) -> str:
    """A printable table: mean [95% CI] and the paired difference from dm [95% CI]."""
    table = summary if categories else summary[summary["category"] == ALL]

    def interval(mean, low, high, signed=False):
        if not np.isfinite(mean):
            return "-"
        fmt = "{:+.4f}" if signed else "{:.4f}"
        ci = f" [{fmt.format(low)}, {fmt.format(high)}]" if np.isfinite(low) else ""
        return fmt.format(mean) + ci

    shown = pd.DataFrame({
        "metric": table["metric"], "category": table["category"], "variant": table["variant"],
        "n": table["n"],
        "mean [95% CI]": [interval(*r) for r in table[["mean", "ci95_low", "ci95_high"]].to_numpy()],
        "vs dm [95% CI]": [interval(*r, signed=True) for r in
                           table[["diff_vs_dm_mean", "diff_vs_dm_ci95_low", "diff_vs_dm_ci95_high"]].to_numpy()],
    })
    if not categories:
        shown = shown.drop(columns="category")
    return shown.to_string(index=False)
