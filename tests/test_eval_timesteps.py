"""The report's timestep panel: measured traces against the theoretical curves (§3)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest

from evaluation.offline.fake_run import make_fake_run
from evaluation.timesteps import read_timesteps, run_curve, step_means, theory_curves, timestep_figure


def test_theory_is_the_closed_form_of_section_3():
    """Checked against §3's formulas written out by hand for N = 10, Y = 1000, o = 1."""
    curves = theory_curves("bin", 10, [0.5, 0.7])
    x = np.arange(1, 11)
    assert np.allclose(curves["linear"], 1001 - 100 * x)
    for k in (0.5, 0.7):
        assert np.allclose(curves[f"bin k={k:g}"], 1 + k * (1000 - 10 * x**2) + (1 - k) * (1000 - 100 * x))
    assert curves["linear"][-1] == pytest.approx(1.0) and curves["bin k=0.5"][-1] == pytest.approx(1.0)


def test_a_real_trace_follows_the_theoretical_curves(tiny_pipe):
    """The tiny model with a fixed mask (left half item 0): dm's timesteps are the linear curve, and
    asyndm's item pixels the concave one and its background the linear one, to rounding. So model
    call i sits at x = i + 1 of the closed forms, as the panel draws it."""
    from asyndm.callbacks import TimestepTrace

    pipe = tiny_pipe
    trace = TimestepTrace()
    out = pipe("a cat eating a sandwich", items=["cat"], k=0.5, variants=["dm", "asyndm"], num_images=1,
               num_inference_steps=8, guidance_scale=1.0, output_type="latent", callbacks=[trace],
               mask=_left_half(pipe))
    theory = theory_curves("bin", 8, [0.5])
    dm = pd.DataFrame(trace.rows("dm", out["dm"].masks))
    asyn = pd.DataFrame(trace.rows("asyndm", out["asyndm"].masks))
    assert dm["item_mean"].isna().all()
    assert np.abs(dm["background_mean"].to_numpy() - np.round(theory["linear"])).max() <= 1
    assert np.abs(asyn["item_mean"].to_numpy() - theory["bin k=0.5"]).max() <= 1
    assert np.abs(asyn["background_mean"].to_numpy() - theory["linear"]).max() <= 1
    # and far from each other mid-way: the comparison is not vacuous
    assert (asyn["item_mean"] - asyn["background_mean"]).max() > 50


def _left_half(pipe):
    import torch

    _, h, w = pipe.backend.latent_shape(*pipe.backend.default_size)
    mask = torch.full((1, h, w), -1, dtype=torch.long)
    mask[:, :, : w // 2] = 0
    return mask


def test_step_means_average_images_and_skip_missing_items(tmp_path):
    run = make_fake_run(tmp_path / "run", config={"curve": {"name": "bin"}, "sample": {"steps": 6}})
    trace = read_timesteps(run)
    means = step_means(trace).set_index(["variant", "step"])
    by_hand = trace[(trace.variant == "asyndm") & (trace.step == 2)]["item_mean"].mean()
    assert means.loc[("asyndm", 2), "item_mean"] == pytest.approx(by_hand)
    assert means.loc[("asyndm", 2), "images"] == 4 and means.loc[("dm", 2), "images_with_items"] == 0
    assert np.isnan(means.loc[("dm", 2), "item_mean"])
    assert run_curve(run) == ("bin", 6, [0.5])


def test_one_panel_per_curve_of_a_sweep(tmp_path):
    runs = {curve: make_fake_run(tmp_path / curve, config={"curve": {"name": curve}, "sample": {"steps": 5}})
            for curve in ("bin", "lin", "exp")}
    runs["old"] = make_fake_run(tmp_path / "old", timesteps=False)  # a folder from before the trace
    figure = timestep_figure(runs)
    panels = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["bin", "lin", "exp"]
    for ax, curve in zip(panels, ("bin", "lin", "exp")):
        labels = [line.get_label() for line in ax.get_lines()]
        assert f"theory: {curve} k=0.5" in labels and "asyndm: items" in labels and "dm: all pixels" in labels
        assert ax.get_ylim()[0] == 0  # the whole timestep range, not zoomed
    assert timestep_figure({"old": runs["old"]}) is None
