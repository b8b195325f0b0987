import math

import numpy as np
import pandas as pd
import pytest

from evaluation.summary import format_summary, summarize

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
