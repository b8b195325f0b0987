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
    assert {"sd21-shaped", "sdxl-shaped", "sd35m-shaped", "flux-shaped", "wan-shaped"} <= set(benchmark.SHAPED)
    assert {"tiny_sdxl", "tiny_sd3", "tiny_flux", "tiny_wan", "toy"} <= set(benchmark.BUILT_IN)


def test_benchmark_runs_the_mmdit_families(capsys):
    spec = importlib.util.spec_from_file_location("benchmark", SCRIPT)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    for model, side in (("tiny_sd3", "64"), ("tiny_flux", "128")):
        summary = benchmark.main(["--model", model, "--device", "cpu", "--steps", "2", "--batch-size", "1",
                                  "--repeats", "1", "--resolution", side])
        assert summary["model"] == model and summary["resolution"] == int(side)
        assert summary["asyndm_s_per_image"] > 0 and summary["vanilla_s_per_image"] > 0


def test_the_shaped_mmdit_architectures_build(monkeypatch):
    """--model sd35m-shaped / flux-shaped: the real architectures (on the meta device: no memory, no time)."""
    import torch

    from asyndm.offline.flux import flux_dev_shaped_pipeline
    from asyndm.offline.sd3 import sd35_medium_shaped_pipeline

    with torch.device("meta"):
        sd35, flux = sd35_medium_shaped_pipeline(), flux_dev_shaped_pipeline()
    billions = lambda module: sum(p.numel() for p in module.parameters()) / 1e9  # noqa: E731
    assert 2.2 < billions(sd35.transformer) < 2.3 and len(sd35.transformer.transformer_blocks) == 24
    assert 11.8 < billions(flux.transformer) < 12.0 and len(flux.transformer.single_transformer_blocks) == 38
    assert sd35.default_sample_size * sd35.vae_scale_factor == flux.default_sample_size * flux.vae_scale_factor == 1024


def test_call_cost_splits_a_step_into_the_per_token_path_and_the_capture(capsys, monkeypatch):
    """scripts/call_cost.py on both MMDiT families: three timings per family and the JSON last line
    (no timing asserted)."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # as `python scripts/call_cost.py` has it: it imports benchmark
    spec = importlib.util.spec_from_file_location("call_cost", SCRIPT.parent / "call_cost.py")
    call_cost = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(call_cost)
    for model, side in (("tiny_sd3", "64"), ("tiny_flux", "128")):
        summary = call_cost.main(["--model", model, "--device", "cpu", "--rounds", "1", "--batch-size", "1",
                                  "--resolution", side])
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == summary
        assert all(summary[f"{kind}_ms"] > 0 for kind in ("plain", "per_cell", "per_cell_and_capture"))


def test_benchmark_runs_wan_videos_beside_the_wan_pipeline(capsys):
    spec = importlib.util.spec_from_file_location("benchmark", SCRIPT)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    summary = benchmark.main(["--model", "tiny_wan", "--device", "cpu", "--steps", "2", "--batch-size", "1",
                              "--repeats", "1", "--resolution", "64", "--frames", "5"])
    assert summary["model"] == "tiny_wan" and summary["frames"] == 5
    assert summary["asyndm_s_per_image"] > 0 and summary["vanilla_s_per_image"] > 0


def test_the_shaped_wan_architecture_builds():
    """--model wan-shaped: Wan 2.1 T2V 1.3B's transformer (on the meta device: no memory, no time)."""
    import torch

    from asyndm.offline.wan import wan21_1_3b_shaped_pipeline

    with torch.device("meta"):
        wan = wan21_1_3b_shaped_pipeline()
    billions = sum(p.numel() for p in wan.transformer.parameters()) / 1e9
    assert 1.3 < billions < 1.5 and len(wan.transformer.blocks) == 30
    assert (wan.vae_scale_factor_temporal, wan.vae_scale_factor_spatial) == (4, 8)


@pytest.mark.slow
def test_compiled_benchmark_reports_ratios_compile_time_and_recompiles(capsys):
    """--compile: eager and compiled diffusers and asyndm side by side (the shapes of
    tests/test_compilation.py, so a suite run compiles them once)."""
    spec = importlib.util.spec_from_file_location("benchmark", SCRIPT)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    summary = benchmark.main(["--model", "tiny", "--device", "cpu", "--steps", "2", "--batch-size", "2",
                              "--resolution", "64", "--repeats", "1", "--variants", "asyndm", "--compile"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == summary
    for method in ("vanilla", "asyndm", "vanilla_compiled", "asyndm_compiled"):
        assert summary[f"{method}_s_per_image"] > 0, method
    ratio = summary["asyndm_compiled_s_per_image"] / summary["vanilla_s_per_image"]
    assert abs(summary["compiled_asyndm_over_vanilla"] - ratio) <= 1e-3 * ratio
    ratio = summary["asyndm_compiled_s_per_image"] / summary["vanilla_compiled_s_per_image"]
    assert abs(summary["compiled_asyndm_over_compiled_vanilla"] - ratio) <= 1e-3 * ratio
    assert "compile_s" in summary and summary["recompiles"] == 0
