"""Per variant and metric: the mean with a 95% interval, and the paired gain over `dm`.

Variants of one (prompt_idx, seed) start from the same noise, so the paired difference
`variant - dm` on those pairs removes the prompt and seed variance that the two means share;
its interval is much tighter than comparing the two means.

Intervals depend on the metric, and summary.csv says which one each row uses
(`ci95_method`, `diff_vs_dm_ci95_method`):

- continuous metrics: Student-t intervals of the mean and of the mean paired difference (`t`).
- proportions, metrics whose every value is 0 or 1 (`shapes/exact`, `vlm/unparseable`): the
  Wilson score interval of the mean (`wilson`), which stays inside [0, 1] where a t-interval of
  0.875 from 8 images reaches 1.057; and a percentile bootstrap over the (prompt, seed) pairs of
  the paired difference (`paired_bootstrap`, fixed seed, so the same results give the same
  interval), which stays inside [-1, 1]; below 10 pairs it gives no interval.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from asyndm.run_folder import read_table
from evaluation.variants import BASELINE, variant_key

ALL = "all"
T = "t"
WILSON = "wilson"
PAIRED_BOOTSTRAP = "paired_bootstrap"
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
# Fewer pairs get no bootstrap interval: resamples of a handful of pairs give a degenerate one
# (two pairs that both lost: [-1, -1]).
BOOTSTRAP_MIN_PAIRS = 10
SUMMARY_COLUMNS = ["variant", "metric", "category", "n", "mean", "std", "ci95_low", "ci95_high",
                   "n_pairs", "diff_vs_dm_mean", "diff_vs_dm_ci95_low", "diff_vs_dm_ci95_high",
                   "ci95_method", "diff_vs_dm_ci95_method"]
Z95 = float(stats.norm.ppf(0.975))


def _finite(values) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    return x[np.isfinite(x)]


def is_proportion(values) -> bool:
    """True when every finite value is 0 or 1 (and there is at least one)."""
    x = _finite(values)
    return len(x) > 0 and bool(np.isin(x, (0.0, 1.0)).all())


def mean_ci95(values) -> tuple[int, float, float, float, float]:
    """(n, mean, std, ci_low, ci_high) of finite values, Student t; std with ddof=1; NaN where n is too small."""
    x = _finite(values)
    n = len(x)
    if n == 0:
        return 0, math.nan, math.nan, math.nan, math.nan
    mean = float(x.mean())
    if n == 1:
        return 1, mean, math.nan, math.nan, math.nan
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return n, mean, std, mean - half, mean + half


def wilson_ci95(values) -> tuple[int, float, float, float, float]:
    """(n, mean, std, ci_low, ci_high) of 0/1 values with the Wilson score interval (inside [0, 1])."""
    x = _finite(values)
    n = len(x)
    if n == 0:
        return 0, math.nan, math.nan, math.nan, math.nan
    p = float(x.mean())
    std = float(x.std(ddof=1)) if n > 1 else math.nan
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return n, p, std, max(0.0, centre - half), min(1.0, centre + half)


def paired_bootstrap_ci95(diffs, resamples: int = BOOTSTRAP_RESAMPLES,
                          seed: int = BOOTSTRAP_SEED) -> tuple[int, float, float, float, float]:
    """(n, mean, std, ci_low, ci_high) of paired differences: the 2.5% and 97.5% percentiles of the
    mean over `resamples` resamples of the pairs with replacement (numpy's default_rng(`seed`));
    no interval (NaN) below BOOTSTRAP_MIN_PAIRS pairs.

    A resample's mean depends only on how often each distinct difference is drawn, so the counts
    are drawn from a multinomial: the same distribution as drawing pair indices, in O(distinct
    values) per resample. Every resampled mean lies between the smallest and largest difference,
    so differences of proportions (in {-1, 0, 1}) get an interval inside [-1, 1].
    """
    x = _finite(diffs)
    n = len(x)
    if n < BOOTSTRAP_MIN_PAIRS:
        return (n, float(x.mean()) if n else math.nan, float(x.std(ddof=1)) if n > 1 else math.nan,
                math.nan, math.nan)
    distinct, counts = np.unique(x, return_counts=True)
    draws = np.random.default_rng(seed).multinomial(n, counts / n, size=resamples)  # (resamples, distinct)
    means = draws @ distinct / n
    low, high = np.percentile(means, [2.5, 97.5])
    return n, float(x.mean()), float(x.std(ddof=1)), float(low), float(high)


def _rows(results: pd.DataFrame, category: str, proportions: set[str]) -> list[dict]:
    rows = []
    for metric, by_metric in results.groupby("metric", sort=True):
        proportion = metric in proportions
        interval, diff_interval = (wilson_ci95, paired_bootstrap_ci95) if proportion else (mean_ci95, mean_ci95)
        base = by_metric[by_metric["variant"] == BASELINE]
        base = base.groupby(["prompt_idx", "seed"])["value"].mean()
        for variant in sorted(by_metric["variant"].unique(), key=variant_key):
            cur = by_metric[by_metric["variant"] == variant]
            n, mean, std, low, high = interval(cur["value"])
            row = dict(variant=variant, metric=metric, category=category, n=n, mean=mean, std=std,
                       ci95_low=low, ci95_high=high, n_pairs=math.nan, diff_vs_dm_mean=math.nan,
                       diff_vs_dm_ci95_low=math.nan, diff_vs_dm_ci95_high=math.nan,
                       ci95_method=WILSON if proportion else T, diff_vs_dm_ci95_method="")
            if variant != BASELINE and len(base):
                paired = cur.groupby(["prompt_idx", "seed"])["value"].mean().to_frame("value").join(
                    base.rename("base"), how="inner")
                diff = (paired["value"] - paired["base"]).to_numpy()
                n_pairs, d_mean, _, d_low, d_high = diff_interval(diff)
                row.update(n_pairs=n_pairs, diff_vs_dm_mean=d_mean, diff_vs_dm_ci95_low=d_low,
                           diff_vs_dm_ci95_high=d_high, diff_vs_dm_ci95_method=PAIRED_BOOTSTRAP if proportion else T)
            rows.append(row)
    return rows


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """summary table of a results table (see module docstring); category `all` = every prompt.

    Rows per category are added when the run's prompts carry categories. Whether a metric is a
    proportion is decided on all of its values, so every category of it uses the same method.
    """
    proportions = {m for m, values in results.groupby("metric")["value"] if is_proportion(values)}
    rows = _rows(results, ALL, proportions)
    categories = sorted(c for c in results["category"].astype(str).unique() if c not in ("", "nan"))
    for category in categories:
        rows += _rows(results[results["category"].astype(str) == category], category, proportions)
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    summary["n_pairs"] = summary["n_pairs"].astype(float)
    return summary


def read_summary(path) -> pd.DataFrame:
    """summary.csv as written by `summarize`; an older file without the method columns gets `t`,
    which is what it was computed with."""
    numeric = ("mean", "std", "ci95_low", "ci95_high", "n_pairs", "diff_vs_dm_mean", "diff_vs_dm_ci95_low",
               "diff_vs_dm_ci95_high")
    summary = read_table(path, keep_default_na=False, na_values={c: ["", "nan", "NaN"] for c in numeric})
    summary["category"] = summary["category"].astype(str)
    if "ci95_method" not in summary.columns:
        summary["ci95_method"] = T
    if "diff_vs_dm_ci95_method" not in summary.columns:
        summary["diff_vs_dm_ci95_method"] = np.where(summary["diff_vs_dm_mean"].notna(), T, "")
    return summary


def shown_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """Rows worth showing: a metric's category rows only where some variant has a value (n > 0).

    A metric that does not apply to a category (shapes/relation on single-object prompts) has
    n = 0 there for every variant: those rows say nothing and are left out of tables.
    """
    has_values = summary.groupby(["metric", "category"])["n"].transform("max") > 0
    return summary[has_values]


def format_interval(mean, low, high, decimals: int = 4, signed: bool = False) -> str:
    """'0.8750 [0.6910, 0.9650]'; '-' without a mean, the mean alone without an interval."""
    if not np.isfinite(mean):
        return "-"
    fmt = f"{{:{'+' if signed else ''}.{decimals}f}}"
    ci = f" [{fmt.format(low)}, {fmt.format(high)}]" if np.isfinite(low) and np.isfinite(high) else ""
    return fmt.format(mean) + ci


def format_summary(summary: pd.DataFrame, categories: bool = False) -> str:
    """A printable table: mean [95% CI] and the paired difference from dm [95% CI], with the method."""
    table = shown_rows(summary if categories else summary[summary["category"] == ALL])
    methods = table.get("ci95_method", pd.Series(T, index=table.index)).fillna(T).astype(str)
    diff_methods = table.get("diff_vs_dm_ci95_method", pd.Series("", index=table.index)).fillna("").astype(str)
    shown = pd.DataFrame({
        "metric": table["metric"], "category": table["category"], "variant": table["variant"],
        "n": table["n"],
        "mean [95% CI]": [format_interval(*r) for r in table[["mean", "ci95_low", "ci95_high"]].to_numpy()],
        "vs dm [95% CI]": [format_interval(*r, signed=True) for r in
                           table[["diff_vs_dm_mean", "diff_vs_dm_ci95_low", "diff_vs_dm_ci95_high"]].to_numpy()],
        "CI": [m if not d or d == m else f"{m}; {d}" for m, d in zip(methods, diff_methods)],
    })
    if not categories:
        shown = shown.drop(columns="category")
    return shown.to_string(index=False)
