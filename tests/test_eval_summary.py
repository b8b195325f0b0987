import math

import numpy as np
import pandas as pd
import pytest

from evaluation.summary import format_summary, mean_ci95, paired_bootstrap_ci95, summarize, wilson_ci95

# Student t quantile, 97.5%, 2 degrees of freedom (textbook table value).
T2 = 4.302652729911275


def _results():
    # Three (prompt, seed) pairs; asyndm is dm + (0.1, 0.2, 0.3).
    rows = []
    dm = [0.30, 0.34, 0.29]
    asyn = [0.40, 0.54, 0.59]
    cats = ["animal", "animal", "color"]
    for i, (d, a, c) in enumerate(zip(dm, asyn, cats)):
        for variant, v in (("dm", d), ("asyndm", a)):
            rows.append(dict(image_idx=i, prompt_idx=i, prompt=f"p{i}", category=c, seed=7, variant=variant,
                             metric="clip/cosine_raw", value=v))
    return pd.DataFrame(rows)


def test_overall_numbers_by_hand():
    summary = summarize(_results())
    overall = summary[summary.category == "all"].set_index("variant")
    assert list(overall.index) == ["dm", "asyndm"]
    dm = overall.loc["dm"]
    mean = (0.30 + 0.34 + 0.29) / 3
    std = math.sqrt(sum((x - mean) ** 2 for x in (0.30, 0.34, 0.29)) / 2)
    assert dm["n"] == 3
    assert dm["mean"] == pytest.approx(mean)
    assert dm["std"] == pytest.approx(std)
    assert dm["ci95_low"] == pytest.approx(mean - T2 * std / math.sqrt(3))
    assert dm["ci95_high"] == pytest.approx(mean + T2 * std / math.sqrt(3))
    assert math.isnan(dm["diff_vs_dm_mean"]) and math.isnan(dm["n_pairs"])
    a = overall.loc["asyndm"]
    # Paired differences 0.1, 0.2, 0.3: mean 0.2, std 0.1.
    assert a["n_pairs"] == 3
    assert a["diff_vs_dm_mean"] == pytest.approx(0.2)
    assert a["diff_vs_dm_ci95_low"] == pytest.approx(0.2 - T2 * 0.1 / math.sqrt(3))
    assert a["diff_vs_dm_ci95_high"] == pytest.approx(0.2 + T2 * 0.1 / math.sqrt(3))


def test_category_rows_and_pairing_by_prompt_and_seed():
    results = _results()
    # Shuffle rows and drop one dm image: only two pairs are left overall.
    results = results.sample(frac=1, random_state=0)
    results = results[~((results.variant == "dm") & (results.prompt_idx == 2))]
    summary = summarize(results)
    overall = summary[(summary.category == "all") & (summary.variant == "asyndm")].iloc[0]
    assert overall["n"] == 3 and overall["n_pairs"] == 2
    assert overall["diff_vs_dm_mean"] == pytest.approx(0.15)
    animal = summary[(summary.category == "animal") & (summary.variant == "asyndm")].iloc[0]
    assert animal["mean"] == pytest.approx(0.47) and animal["n"] == 2
    color = summary[(summary.category == "color")].set_index("variant")
    assert list(color.index) == ["asyndm"] and color.loc["asyndm", "n"] == 1
    assert np.isnan(color.loc["asyndm", "ci95_low"])  # one value: no interval


def test_no_category_rows_when_categories_are_empty():
    results = _results().assign(category="")
    summary = summarize(results)
    assert set(summary.category) == {"all"}
    text = format_summary(summary)
    assert "asyndm" in text and "+0.2000" in text and "0.3100" in text


# --- proportions: Wilson for means, a paired bootstrap for differences ----------------------------

def _binary_results(dm, other, variant="asyndm", metric="shapes/exact"):
    rows = []
    for i, (d, a) in enumerate(zip(dm, other)):
        for name, value in (("dm", d), (variant, a)):
            rows.append(dict(image_idx=i, prompt_idx=i, prompt=f"p{i}", category="", seed=0, variant=name,
                             metric=metric, value=float(value)))
    return pd.DataFrame(rows)


def test_proportion_interval_is_wilson_and_stays_inside_0_1():
    """7 of 8 correct: the t-interval reaches past 1 (0.875 [0.579, 1.171]); the Wilson interval,
    checked against its textbook formula and a published value, stays inside [0, 1]."""
    values = [1, 1, 1, 1, 1, 1, 1, 0]
    _, _, _, t_low, t_high = mean_ci95(values)
    assert t_high > 1.0  # what summary.csv reported before
    summary = summarize(_binary_results(values, values))
    row = summary[(summary.variant == "dm") & (summary.category == "all")].iloc[0]
    assert row["ci95_method"] == "wilson"
    z = 1.959963984540054
    p, n = 7 / 8, 8
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert row["mean"] == pytest.approx(0.875)
    assert row["ci95_low"] == pytest.approx(centre - half) and row["ci95_high"] == pytest.approx(centre + half)
    assert 0.0 <= row["ci95_low"] < row["mean"] < row["ci95_high"] <= 1.0
    assert row["ci95_high"] == pytest.approx(0.9776, abs=1e-4)  # Wilson 95% for 7/8 (published tables: 0.978)
    # all correct: the interval touches 1 and stays below it; t would give no width at all
    n_all, mean_all, _, low_all, high_all = wilson_ci95([1] * 8)
    assert (mean_all, high_all) == (1.0, 1.0) and 0.6 < low_all < 0.7


def test_paired_differences_of_proportions_stay_inside_minus1_1():
    """Ten of twelve pairs where only dm is right: a paired t-interval passes -1; the paired
    bootstrap stays inside [-1, 1], is reproducible and contains the observed difference."""
    dm = [1] * 10 + [0, 0]
    other = [0] * 12
    diffs = np.array(other) - np.array(dm)
    _, _, _, t_low, _ = mean_ci95(diffs)
    assert t_low < -1.0
    summary = summarize(_binary_results(dm, other))
    row = summary[(summary.variant == "asyndm") & (summary.category == "all")].iloc[0]
    assert row["diff_vs_dm_ci95_method"] == "paired_bootstrap"
    assert row["diff_vs_dm_mean"] == pytest.approx(-10 / 12)
    assert -1.0 <= row["diff_vs_dm_ci95_low"] <= row["diff_vs_dm_mean"] <= row["diff_vs_dm_ci95_high"] <= 1.0
    again = summarize(_binary_results(dm, other))
    assert again.equals(summary)  # fixed seed: the same results give the same interval
    # two pairs that both lost: no interval rather than a degenerate [-1, -1]
    n, mean, _, low, high = paired_bootstrap_ci95([-1.0, -1.0])
    assert (n, mean) == (2, -1.0) and np.isnan(low) and np.isnan(high)


def test_paired_bootstrap_matches_resampling_pairs():
    """The multinomial shortcut has the distribution of resampling pair indices: compare the
    interval with a direct index bootstrap of the same differences (another generator)."""
    diffs = np.array([1] * 9 + [0] * 25 + [-1] * 6, dtype=float)
    _, mean, _, low, high = paired_bootstrap_ci95(diffs)
    rng = np.random.default_rng(123)
    direct = diffs[rng.integers(0, len(diffs), size=(20_000, len(diffs)))].mean(axis=1)
    d_low, d_high = np.percentile(direct, [2.5, 97.5])
    assert mean == pytest.approx(3 / 40)
    assert low == pytest.approx(d_low, abs=0.02) and high == pytest.approx(d_high, abs=0.02)


def test_continuous_metrics_keep_t_intervals_and_columns():
    summary = summarize(_results())
    assert list(summary.columns[:12]) == ["variant", "metric", "category", "n", "mean", "std", "ci95_low",
                                          "ci95_high", "n_pairs", "diff_vs_dm_mean", "diff_vs_dm_ci95_low",
                                          "diff_vs_dm_ci95_high"]
    assert set(summary["ci95_method"]) == {"t"}
    assert set(summary.loc[summary.variant == "asyndm", "diff_vs_dm_ci95_method"]) == {"t"}
    assert set(summary.loc[summary.variant == "dm", "diff_vs_dm_ci95_method"]) == {""}


def test_new_variants_are_summarised_after_the_paper_ones():
    """Any variant name is summarised; registered ones in registration order, unknown ones after."""
    results = pd.concat([_binary_results([1, 0, 1], [1, 1, 1], variant=v, metric="m") for v in
                         ("zz_unknown", "asyndm", "dm_concave")], ignore_index=True).drop_duplicates()
    summary = summarize(results)
    assert list(summary[summary.category == "all"]["variant"]) == ["dm", "dm_concave", "asyndm", "zz_unknown"]
    assert summary.set_index("variant").loc["zz_unknown", "diff_vs_dm_mean"] == pytest.approx(1 / 3)


def test_categories_without_values_are_not_shown():
    """shapes/relation applies to relation prompts only: its other categories (n = 0) are left out."""
    results = _results()
    results = pd.concat([results, results.assign(metric="shapes/relation",
                                                 value=np.where(results.category == "color", 1.0, np.nan))])
    summary = summarize(results)
    assert len(summary[(summary.metric == "shapes/relation") & (summary.category == "animal")]) == 2  # in the csv
    text = format_summary(summary, categories=True)
    relation_lines = [line for line in text.splitlines() if "shapes/relation" in line]
    assert relation_lines and not any("animal" in line for line in relation_lines)
    assert any("animal" in line for line in text.splitlines() if "clip/cosine_raw" in line)
