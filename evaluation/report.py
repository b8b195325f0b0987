"""`asyndm-report <run or sweep folder>`: an HTML page with metric plots and image grids.

report.html embeds its figures (so it can be mailed or attached as one file); the same figures
are also written as PNGs to report/. A sweep folder is any folder whose subfolders hold runs
(config.yaml + manifest.csv); its plots compare runs, labelled by their curve.
"""

from __future__ import annotations

import argparse
import base64
import html
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from PIL import Image  # noqa: E402

from evaluation.io import grid_columns, mask_file, read_manifest, read_results  # noqa: E402
from evaluation.summary import ALL, format_summary, order_variants  # noqa: E402

COLORS = {"dm": "#7f7f7f", "dm_concave": "#1f77b4", "asyndm": "#d62728"}
OTHER_COLORS = ("#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#393b79")


def variant_color(variant: str, variants: list[str]) -> str:
    """The paper's three keep their colours; every other variant gets the next free one, by order."""
    others = [v for v in variants if v not in COLORS]
    return COLORS.get(variant) or OTHER_COLORS[others.index(variant) % len(OTHER_COLORS)]



def find_runs(folder: Path) -> list[Path]:
    """`folder` itself if it is a run, else every run below it (sorted)."""
    folder = Path(folder)
    if (folder / "manifest.csv").is_file():
        return [folder]
    return sorted(p.parent for p in folder.rglob("manifest.csv") if (p.parent / "config.yaml").is_file())


def run_label(run_dir: Path, runs: list[Path]) -> str:
    """The run's curve name; the folder name where several runs share a curve."""
    try:
        curve = str(OmegaConf.load(run_dir / "config.yaml").curve.name)
    except Exception:
        return run_dir.name
    curves = []
    for other in runs:
        try:
            curves.append(str(OmegaConf.load(other / "config.yaml").curve.name))
        except Exception:
            curves.append(other.name)
    return curve if curves.count(curve) == 1 else f"{curve}:{run_dir.name}"


def _variants(frame: pd.DataFrame) -> list[str]:
    return order_variants(frame["variant"])


def _error(frame: pd.DataFrame, mean: str, low: str, high: str) -> np.ndarray:
    err = np.vstack([frame[mean] - frame[low], frame[high] - frame[mean]]).astype(float)
    return np.nan_to_num(err)  # no interval (n = 1): no error bar


def _metric_axes(n: int, panel_width: float, panel_height: float, per_row: int = 3):
    """A figure with one panel per metric, at most ``per_row`` panels to a row."""
    cols, rows = min(n, per_row), -(-n // per_row)
    fig, axes = plt.subplots(rows, cols, figsize=(panel_width * cols, panel_height * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def plot_metrics(summaries: dict[str, pd.DataFrame], path: Path) -> Path:
    """Bars of each metric's mean per variant with 95% CIs; grouped by run when there are several."""
    metrics = sorted({m for s in summaries.values() for m in s["metric"]})
    fig, axes = _metric_axes(len(metrics), max(4.5, 1.6 * len(summaries) + 2.5), 3.6)
    for ax, metric in zip(axes, metrics):
        labels = list(summaries)
        variants = _variants(pd.concat([s[s.metric == metric] for s in summaries.values()]))
        everywhere = _variants(pd.concat(summaries.values()))
        width = 0.8 / len(variants)
        for j, variant in enumerate(variants):
            rows = [s[(s.metric == metric) & (s.category == ALL) & (s.variant == variant)] for s in summaries.values()]
            frame = pd.concat([r if len(r) else pd.DataFrame({"mean": [np.nan], "ci95_low": [np.nan],
                                                               "ci95_high": [np.nan]}) for r in rows])
            x = np.arange(len(labels)) + (j - (len(variants) - 1) / 2) * width
            ax.bar(x, frame["mean"], width, yerr=_error(frame, "mean", "ci95_low", "ci95_high"), capsize=3,
                   label=variant, color=variant_color(variant, everywhere))
        shown = pd.concat([s[(s.metric == metric) & (s.category == ALL)] for s in summaries.values()])
        lo = np.nanmin(shown["ci95_low"].fillna(shown["mean"]).to_numpy(dtype=float))
        hi = np.nanmax(shown["ci95_high"].fillna(shown["mean"]).to_numpy(dtype=float))
        if np.isfinite(lo) and np.isfinite(hi) and hi > lo:
            pad = 0.15 * (hi - lo)
            ax.set_ylim(lo - pad, hi + pad)  # zoom in: differences are a few percent of the scale
        ax.set_xticks(np.arange(len(labels)), labels if len(labels) > 1 else [""], rotation=20 if len(labels) > 3 else 0)
        ax.set_title(metric)
        ax.set_ylabel("mean (95% CI)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_paired(summaries: dict[str, pd.DataFrame], path: Path) -> Path:
    """Paired difference from dm (same prompt and seed) per variant and run, with 95% CIs."""
    metrics = sorted({m for s in summaries.values() for m in s["metric"]})
    fig, axes = _metric_axes(len(metrics), 6.5, 1.4 + 0.45 * max(2, sum(len(_variants(s)) - 1 for s in summaries.values())))
    everywhere = _variants(pd.concat(summaries.values()))
    for ax, metric in zip(axes, metrics):
        names, means, errs, colors = [], [], [], []
        for label, s in summaries.items():
            rows = s[(s.metric == metric) & (s.category == ALL) & (s.variant != "dm")]
            for row in rows.itertuples(index=False):
                names.append(f"{label}: {row.variant}" if len(summaries) > 1 else row.variant)
                means.append(row.diff_vs_dm_mean)
                errs.append([row.diff_vs_dm_mean - row.diff_vs_dm_ci95_low, row.diff_vs_dm_ci95_high - row.diff_vs_dm_mean])
                colors.append(variant_color(row.variant, everywhere))
        y = np.arange(len(names))[::-1]
        ax.axvline(0.0, color="k", lw=0.8)
        if names:
            xerr = np.nan_to_num(np.array(errs, dtype=float))  # (n, 2): below, above
            for yi, mean, err, color in zip(y, means, xerr, colors):
                ax.errorbar([mean], [yi], xerr=err.reshape(2, 1), fmt="o", color=color, capsize=3)
        ax.set_yticks(y, names)
        ax.set_title(f"{metric}: paired difference vs dm")
        ax.set_xlabel("variant - dm, same prompt and seed (95% CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def primary_metric(results: pd.DataFrame) -> str:
    """The metric shown under grid images: an exact score where there is one, else the first."""
    metrics = sorted(results["metric"].unique())
    exact = [m for m in metrics if m.endswith("/exact")]
    return (exact or metrics)[0]


def plot_grid(run_dir: Path, path: Path, pairs: int = 4, results: pd.DataFrame | None = None) -> Path:
    """Image grid for the first `pairs` (prompt, seed) pairs: every variant side by side (dm first),
    then the masks of the variants that have them."""
    manifest = read_manifest(run_dir)
    groups = list(manifest.groupby(["prompt_idx", "seed"], sort=True))[:pairs]
    columns = grid_columns(run_dir, manifest)
    fig, axes = plt.subplots(len(groups), len(columns), figsize=(2.3 * len(columns), 2.5 * len(groups)),
                             squeeze=False)
    for r, ((prompt_idx, seed), group) in enumerate(groups):
        files = dict(zip(group["variant"], group["file"]))
        for c, (column, kind, variant) in enumerate(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if kind == "mask":
                idx = group.loc[group["variant"] == variant, "image_idx"]
                file = mask_file(run_dir, idx.iloc[0], variant) if len(idx) else None
            else:
                file = run_dir / files[column] if column in files else None
            if file is not None and file.is_file():
                with Image.open(file) as im:
                    ax.imshow(np.asarray(im.convert("RGB")))
            else:
                ax.text(0.5, 0.5, "absent", ha="center", va="center", transform=ax.transAxes, color="0.5")
            title = column if r == 0 else ""
            if results is not None and kind == "image" and column in files and len(results):
                metric = primary_metric(results)
                score = results[(results.prompt_idx == prompt_idx) & (results.seed == seed)
                                & (results.variant == column) & (results.metric == metric)]
                if len(score):
                    title = (title + "\n" if title else "") + f"{metric} {float(score.iloc[0]['value']):.3f}"
            ax.set_title(title, fontsize=8)
        prompt = group.iloc[0]["prompt"]
        axes[r][0].set_ylabel(f"{prompt[:40]}\nseed {seed}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}" style="max-width:100%">'


def build_report(folder: Path, pairs: int = 4) -> Path:
    """Write `folder/report.html` and `folder/report/*.png`; returns the html path."""
    folder = Path(folder)
    runs = find_runs(folder)
    if not runs:
        raise FileNotFoundError(f"no run folder (config.yaml + manifest.csv) in or below {folder}; "
                                f"pass a folder written by `asyndm`")
    out = folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    labels = {run: run_label(run, runs) for run in runs}
    summaries = {labels[r]: pd.read_csv(r / "summary.csv", keep_default_na=False,
                                        na_values={c: ["", "nan", "NaN"] for c in (
                                            "mean", "std", "ci95_low", "ci95_high", "n_pairs", "diff_vs_dm_mean",
                                            "diff_vs_dm_ci95_low", "diff_vs_dm_ci95_high")})
                 for r in runs if (r / "summary.csv").is_file()}
    parts = [f"<h1>asyndm report: {html.escape(str(folder))}</h1>"]
    if summaries:
        parts.append("<h2>Metrics</h2>" + _img(plot_metrics(summaries, out / "metrics.png")))
        parts.append("<h2>Paired improvement over dm</h2>" + _img(plot_paired(summaries, out / "paired_vs_dm.png")))
    else:
        parts.append("<p><b>No metrics were computed</b> (no summary.csv): run "
                     "<code>asyndm-eval &lt;run_dir&gt; eval=[clip]</code> to score the images.</p>")
    for i, run in enumerate(runs):
        label = labels[run]
        parts.append(f"<h2>Run {html.escape(label)}</h2><p><code>{html.escape(str(run))}</code></p>")
        if label in summaries:
            parts.append(f"<pre>{html.escape(format_summary(summaries[label], categories=True))}</pre>")
        elif len(runs) > 1:
            parts.append("<p>No metrics were computed for this run.</p>")
        results = read_results(run) if (run / "results.csv").is_file() else None
        grid = plot_grid(run, out / (f"grid_{i:02}.png" if len(runs) > 1 else "grid.png"), pairs=pairs, results=results)
        parts.append(_img(grid))
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>asyndm report</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}pre{font-size:12px}</style>"
            "</head><body>" + "\n".join(parts) + "</body></html>")
    path = folder / "report.html"
    from evaluation.io import atomic_write_text

    atomic_write_text(path, page)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="asyndm-report", description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="a run folder, or a sweep folder holding run folders")
    parser.add_argument("--pairs", type=int, default=4, help="(prompt, seed) rows in each image grid")
    args = parser.parse_args(argv)
    from asyndm.sweep import SUMMARY_FILE, is_sweep_folder, write_sweep_summary  # light: no torch

    if is_sweep_folder(args.folder):  # one row per job × variant × metric; failed jobs included
        write_sweep_summary(args.folder)
        print(args.folder / SUMMARY_FILE)
        if not find_runs(args.folder):
            return 0  # no job got as far as sampling: the summary lists them as failed
    print(build_report(args.folder, pairs=args.pairs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
