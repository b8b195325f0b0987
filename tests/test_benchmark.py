"""The benchmark runs end to end on the CPU and reports what the performance issue asks for.

No timing is asserted here: speed targets live in the benchmark's output, not in unit tests.
"""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "benchmark.py"


@pytest.mark.parametrize("model", ["tiny", "tiny_sdxl"])
def test_benchmark_prints_a_table_and_a_json_last_line(capsys, model):
    spec = importlib.util.spec_from_file_location("benchmark", SCRIPT)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    variants = ["dm", "asyndm", "seg", "asyndm+cfgpp"] if model == "tiny" else ["dm", "asyndm"]
    summary = benchmark.main(["--model", model, "--device", "cpu", "--steps", "2", "--batch-size", "1", "--repeats", "1",
                              "--variants", ",".join(variants)])  # the baselines and composed ones too
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == summary
    assert summary["variants"] == variants and summary["model"] == model
    for key in ("vanilla_s_per_image", "dm_s_per_image", "asyndm_s_per_image", "asyndm_over_vanilla",
                "asyndm_over_dm", "asyndm_peak_mem_over_vanilla"):
        assert summary[key] > 0, key
    for variant in variants[1:]:
        ratio = summary[f"{variant}_s_per_image"] / summary["vanilla_s_per_image"]
        assert abs(summary[f"{variant}_over_vanilla"] - ratio) <= 1e-3 * ratio
        assert summary[f"{variant}_peak_mem_over_vanilla"] > 0


def test_shaped_models_include_sdxl():
    spec = importlib.util.spec_from_file_location("benchmark", SCRIPT)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    assert {"sd21-shaped", "sdxl-shaped"} <= set(benchmark.SHAPED) and "tiny_sdxl" in benchmark.BUILT_IN
