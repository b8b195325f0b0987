"""How the timesteps moved: a run's recorded item and background timesteps beside the curves (§3).

Every sampling run writes ``timesteps.csv`` (asyndm/run.py, ``TimestepTrace``): per image,
variant and model call, the mean timestep the model saw over the pixels of the image's final mask
(``item_mean``) and over the rest (``background_mean``). Averaged over images, per variant, these
are the measured curves; next to them the theoretical ones from ``asyndm.curve_shapes.closed_form``
with the run's curve and N, Y = 1000 and o = 1 (SD's and the toy model's scheduler): the concave
curve for each k of the run's prompts and the plain linear one for the background. Call i (from 0)
sees the state after i + 1 transitions, so it is drawn at x = i + 1.

With dynamic masks the measured item curve lies between the two theoretical ones: a pixel counts
as an item by its *final* mask, and it follows the item's curve only from when the mask found it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from asyndm.curve_shapes import closed_form
from asyndm.run_folder import TIMESTEP_COLUMNS as TRACE_COLUMNS, read_table
from evaluation.io import read_manifest
from evaluation.variants import order_variants

TRACE_FILE = "timesteps.csv"
NUM_TRAIN_TIMESTEPS = 1000  # Y
STEPS_OFFSET = 1  # o
PAPER_COLORS = {"dm": "#7f7f7f", "dm_concave": "#1f77b4", "asyndm": "#d62728"}
OTHER_COLORS = ("#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def variant_colors(variants) -> dict[str, str]:
    """A fixed colour for each paper variant, then the next free colour for any other."""
    others = iter(OTHER_COLORS * 4)
    return {v: PAPER_COLORS.get(v) or next(others) for v in order_variants(variants)}


def read_timesteps(run_dir: Path) -> pd.DataFrame | None:
    """The run's timestep trace (timesteps.csv, or the shards' files of an unmerged shard folder);
    None for a folder written before the trace existed."""
    run_dir = Path(run_dir)
    files = [run_dir / TRACE_FILE] if (run_dir / TRACE_FILE).is_file() else sorted(
        run_dir.glob("timesteps.shard-*-of-*.csv"))
    if not files:
        return None
    trace = pd.concat([read_table(f) for f in files], ignore_index=True)
    missing = [c for c in TRACE_COLUMNS if c not in trace.columns]
    if missing:
        raise ValueError(f"{files[0]} lacks columns {missing}; it has {list(trace.columns)}")
    return trace


def step_means(trace: pd.DataFrame) -> pd.DataFrame:
    """Per variant and step: item_mean and background_mean averaged over the images that have such
    pixels (NaN where none has), and how many images were averaged."""
    grouped = trace.groupby(["variant", "step"], sort=True)
    means = grouped[["item_mean", "background_mean"]].mean()  # pandas' mean skips NaN
    means["images"] = grouped["image_idx"].nunique()
    means["images_with_items"] = grouped["item_mean"].count()
    return means.reset_index()


def run_curve(run_dir: Path) -> tuple[str, int, list[float]]:
    """(curve, N, the distinct item k of the run's prompts) from config.yaml and manifest.csv."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(run_dir) / "config.yaml")
    ks = set()
    for text in read_manifest(run_dir)["k"].astype(str).unique():
        try:
            ks.update(round(float(k), 6) for k in json.loads(text))
        except (ValueError, TypeError):
            continue
    return str(cfg.curve.name), int(cfg.sample.steps), sorted(ks)


def theory_curves(curve: str, num_steps: int, ks: list[float]) -> dict[str, np.ndarray]:
    """label -> states at x = 1..N: 'linear' and one '<curve> k=<k>' per k (closed forms, §3)."""
    x = np.arange(1, num_steps + 1, dtype=np.float64)

    def states(name, k):
        return closed_form(name, x, k, num_steps, NUM_TRAIN_TIMESTEPS, STEPS_OFFSET)

    curves = {"linear": states("linear", 0.0)}
    for k in ks:
        curves[f"{curve} k={k:g}"] = states(curve, k)
    return curves


def plot_timesteps(runs: dict[str, Path], path: Path, per_row: int = 3) -> Path | None:
    """`timestep_figure` saved to `path`; None (and no file) when no run has a trace."""
    import matplotlib.pyplot as plt

    fig = timestep_figure(runs, per_row)
    if fig is None:
        return None
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def timestep_figure(runs: dict[str, Path], per_row: int = 3):
    """One panel per run (label -> folder) that has a trace: each variant's mean item (solid) and
    background (dashed) timestep per step, and the theoretical curves in black. None when no run
    has a trace."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    traces = {label: read_timesteps(run) for label, run in runs.items()}
    traces = {label: trace for label, trace in traces.items() if trace is not None and len(trace)}
    if not traces:
        return None
    colors = variant_colors(v for t in traces.values() for v in t["variant"].unique())
    n = len(traces)
    cols, rows = min(n, per_row), -(-n // per_row)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), squeeze=False, sharey=True)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    for ax, (label, trace) in zip(flat, traces.items()):
        means = step_means(trace)
        x = means["step"].to_numpy() + 1
        try:
            curve, num_steps, ks = run_curve(runs[label])
            for name, y in theory_curves(curve, num_steps, ks).items():
                ax.plot(np.arange(1, num_steps + 1), y, color="black", lw=1.0,
                        ls=":" if name == "linear" else "-", alpha=0.55,
                        label=f"theory: {name}" if name != "linear" else "theory: linear (background)")
        except Exception as error:  # noqa: BLE001 - a folder without config or k still shows its trace
            curve = "?"
            ax.text(0.02, 0.02, f"no theoretical curves: {error}", transform=ax.transAxes, fontsize=6)
        for variant in order_variants(means["variant"]):
            rows_v = means["variant"] == variant
            item, background = means.loc[rows_v, "item_mean"], means.loc[rows_v, "background_mean"]
            if item.notna().any():
                ax.plot(x[rows_v.to_numpy()], item, color=colors[variant], lw=1.8, marker="o", ms=2.5,
                        label=f"{variant}: items")
            if background.notna().any():  # a variant without masks has no item pixels: all are "background"
                ax.plot(x[rows_v.to_numpy()], background, color=colors[variant], lw=1.4, ls="--",
                        label=f"{variant}: background" if item.notna().any() else f"{variant}: all pixels")
        ax.set_title(f"{label} (curve {curve})" if curve not in label else label, fontsize=10)
        ax.set_xlabel("sampling step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, NUM_TRAIN_TIMESTEPS + 20)
        ax.grid(alpha=0.25)
        ax.legend(fontsize=6.5, loc="upper right")
    for ax in axes[:, 0]:
        ax.set_ylabel("mean timestep the model saw")
    fig.tight_layout()
    return fig
