"""`asyndm-report <run or sweep folder>`: an HTML page with metric tables, plots and image grids.

report.html embeds its figures (so it can be mailed or attached as one file); the same figures
are also written as PNGs to report/. A sweep folder is any folder whose subfolders hold runs
(config.yaml + manifest.csv); its plots compare runs, labelled by their curve.

The page holds, in order: one HTML table per metric (mean [95% CI] per run and variant and the
paired difference from dm, each header naming its interval method; per category with
``--categories``); the means as points with their intervals (proportions on a 0-1 axis); the
paired differences; the timesteps each run's item and background pixels saw beside the
theoretical curves; and per run a grid of paired images. ``--screenshot PNG`` renders the
finished page in headless Chromium, to check it as a reader sees it.
"""

from __future__ import annotations

import argparse
import base64
import html
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from PIL import Image  # noqa: E402

from asyndm.errors import debugging, take_debug_flag  # noqa: E402
from asyndm.run_folder import VIDEO_FORMATS, atomic_write_text, mask_video_file, video_file  # noqa: E402
from asyndm.sweep import SUMMARY_FILE, is_sweep_folder, write_sweep_summary  # noqa: E402
from evaluation.io import grid_columns, mask_files, read_manifest, read_results  # noqa: E402
from evaluation.summary import (ALL, PAIRED_BOOTSTRAP, T, WILSON, format_interval, read_summary,  # noqa: E402
                                shown_rows)
from evaluation.timesteps import plot_timesteps, variant_colors  # noqa: E402
from evaluation.variants import BASELINE, order_variants  # noqa: E402

METHOD_NAMES = {T: "Student t", WILSON: "Wilson", PAIRED_BOOTSTRAP: "paired bootstrap", "": "-"}
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:auto;padding:0 12px;color:#1b1b1b}
h1{font-size:1.5em} h2{margin-top:1.6em;border-bottom:1px solid #ccc}
table.videos video,table.videos img{width:200px} table.videos th{font-size:12px;font-weight:normal;max-width:140px}
table.metric{border-collapse:collapse;margin:.4em 0 1.4em;font-size:14px}
table.metric caption{text-align:left;font-weight:600;padding:.3em 0}
table.metric th{background:#dde6f0;padding:4px 10px;text-align:left;border-bottom:2px solid #8fa5bd}
table.metric td{padding:3px 10px;border-bottom:1px solid #e3e3e3;font-variant-numeric:tabular-nums}
table.metric td.num{text-align:right;white-space:nowrap}
table.metric tr.group td{border-top:2px solid #b8c4d0}
p.note{color:#555;font-size:13px}
img{max-width:100%}
"""


def find_runs(folder: Path) -> list[Path]:
    """`folder` itself if it is a run, else every run below it (sorted)."""
    folder = Path(folder)
    if (folder / "manifest.csv").is_file():
        return [folder]
    return sorted(p.parent for p in folder.rglob("manifest.csv") if (p.parent / "config.yaml").is_file())


def _curve(run_dir: Path) -> str | None:
    try:
        return str(OmegaConf.load(run_dir / "config.yaml").curve.name)
    except Exception:  # noqa: BLE001 - a folder without a readable config is labelled by its name
        return None


def _overrides(name: str) -> dict[str, str] | None:
    """A sweep job folder's name (`curve=bin,mask=dynamic`) as {key: value}; None for other names."""
    pairs = [part.partition("=") for part in name.split(",")]
    return {k: v for k, _, v in pairs} if all(sep and k for k, sep, _ in pairs) else None


def run_labels(runs: list[Path]) -> dict[Path, str]:
    """Short names for the runs of a report: the curve where each run has its own; for the jobs of
    a sweep, the overrides that differ between them (`curve=bin, mask=static`); else `curve:folder`."""
    curves = {run: _curve(run) for run in runs}
    if all(curves.values()) and len(set(curves.values())) == len(runs):
        return {run: curves[run] for run in runs}
    overrides = {run: _overrides(run.name) for run in runs}
    if len(runs) > 1 and all(o is not None for o in overrides.values()):
        keys = list(dict.fromkeys(k for o in overrides.values() for k in o))
        varying = [k for k in keys if len({o.get(k) for o in overrides.values()}) > 1]
        labels = {run: ", ".join(f"{k}={overrides[run].get(k, '-')}" for k in varying) for run in runs}
        if len(set(labels.values())) == len(runs):
            return labels
    return {run: run.name if curves[run] is None else f"{curves[run]}:{run.name}" for run in runs}


def run_label(run_dir: Path, runs: list[Path]) -> str:
    """The label of `run_dir` among `runs` (see `run_labels`)."""
    return run_labels(runs)[run_dir]


# --- numbers ---------------------------------------------------------------------------------

def _decimals(summary: pd.DataFrame, metric: str) -> int:
    """3 decimals for a proportion, else enough for 4 significant digits of the largest mean."""
    rows = summary[summary["metric"] == metric]
    if (rows["ci95_method"] == WILSON).all():
        return 3
    top = np.nanmax(np.abs(rows["mean"].to_numpy(dtype=float))) if rows["mean"].notna().any() else 1.0
    return int(min(4, max(1, 3 - math.floor(math.log10(top))))) if top > 0 else 4


def _method_header(methods: pd.Series, fallback: str) -> tuple[str, bool]:
    """(the method's name for a column header, whether every row uses it)."""
    names = sorted({m for m in methods.astype(str) if m})
    if len(names) == 1:
        return METHOD_NAMES.get(names[0], names[0]), True
    return fallback, not names


def metric_tables(summaries: dict[str, pd.DataFrame], categories: bool = False) -> str:
    """One HTML table per metric: a row per run (when several), category (on request) and variant,
    with mean [95% CI] and the paired difference from dm [95% CI]. Headers name the interval
    method; a metric/category without values (n = 0 everywhere) gets no rows."""
    frames = []
    for label, summary in summaries.items():
        table = summary if categories else summary[summary["category"] == ALL]
        frames.append(shown_rows(table).assign(run=label))
    if not frames:
        return ""
    every = pd.concat(frames, ignore_index=True)
    several_runs = len(summaries) > 1
    parts = []
    for metric in sorted(every["metric"].unique()):
        rows = every[every["metric"] == metric]
        decimals = _decimals(rows, metric)
        mean_method, mean_uniform = _method_header(rows["ci95_method"], "per row")
        diff_method, diff_uniform = _method_header(rows["diff_vs_dm_ci95_method"], "per row")
        head = [*(["run"] if several_runs else []), *(["category"] if categories else []), "variant", "n",
                f"mean [95% CI, {mean_method}]", "n pairs", f"vs {BASELINE} [95% CI, {diff_method}]"]
        body = []
        order = {label: i for i, label in enumerate(summaries)}
        cats = sorted(rows["category"].unique(), key=lambda c: (c != ALL, c))
        keys = sorted({(r, c) for r, c in zip(rows["run"], rows["category"])},
                      key=lambda rc: (order[rc[0]], cats.index(rc[1])))
        for run, category in keys:
            block = rows[(rows["run"] == run) & (rows["category"] == category)]
            for i, variant in enumerate(order_variants(block["variant"])):
                row = block[block["variant"] == variant].iloc[0]
                mean = format_interval(row["mean"], row["ci95_low"], row["ci95_high"], decimals)
                diff = format_interval(row["diff_vs_dm_mean"], row["diff_vs_dm_ci95_low"],
                                       row["diff_vs_dm_ci95_high"], decimals, signed=True)
                if not mean_uniform and mean != "-":
                    mean += f" ({METHOD_NAMES.get(row['ci95_method'], row['ci95_method'])})"
                if not diff_uniform and diff != "-":
                    diff += f" ({METHOD_NAMES.get(row['diff_vs_dm_ci95_method'], row['diff_vs_dm_ci95_method'])})"
                n_pairs = "" if not np.isfinite(row["n_pairs"]) else f"{int(row['n_pairs'])}"
                cells = [*([run] if several_runs else []), *([category] if categories else []), variant]
                tr = "<tr class='group'>" if i == 0 and (several_runs or categories) else "<tr>"
                body.append(tr + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells)
                            + f"<td class='num'>{int(row['n'])}</td><td class='num'>{html.escape(mean)}</td>"
                            f"<td class='num'>{n_pairs}</td><td class='num'>{html.escape(diff)}</td></tr>")
        parts.append(f"<table class='metric'><caption>{html.escape(metric)}</caption><thead><tr>"
                     + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"
                     + "".join(body) + "</tbody></table>")
    return "\n".join(parts)


# --- figures ---------------------------------------------------------------------------------

def _metric_axes(n: int, panel_width: float, panel_height: float, per_row: int = 3):
    """A figure with one panel per metric, at most ``per_row`` panels to a row."""
    cols, rows = min(n, per_row), -(-n // per_row)
    fig, axes = plt.subplots(rows, cols, figsize=(panel_width * cols, panel_height * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _is_proportion(frame: pd.DataFrame) -> bool:
    return len(frame) > 0 and bool((frame["ci95_method"] == WILSON).all())


def _errors(means, lows, highs) -> np.ndarray:
    """(2, n) distances below and above each mean; 0 where there is no interval (n = 1)."""
    means, lows, highs = (np.asarray(a, dtype=float) for a in (means, lows, highs))
    return np.nan_to_num(np.vstack([means - lows, highs - means]))


def _metrics_with(summaries: dict[str, pd.DataFrame], column: str) -> list[str]:
    """The metrics with a finite `column` in some run's overall rows (a metric that never applied,
    all NaN, has nothing to plot)."""
    rows = pd.concat([s[s["category"] == ALL] for s in summaries.values()])
    return sorted(rows.loc[np.isfinite(rows[column].to_numpy(dtype=float)), "metric"].unique())


def plot_metrics(summaries: dict[str, pd.DataFrame], path: Path) -> Path | None:
    """Each metric's mean per run and variant as a point with its 95% interval. Proportions are
    drawn on their whole 0-1 range; other metrics on a range around their intervals (points, not
    bars, so the axis need not start at 0)."""
    overall = {label: s[s["category"] == ALL] for label, s in summaries.items()}
    metrics = _metrics_with(summaries, "mean")
    if not metrics:
        return None
    labels = list(overall)
    variants = order_variants(v for s in overall.values() for v in s["variant"])
    colors = variant_colors(variants)
    fig, axes = _metric_axes(len(metrics), max(4.5, 1.3 * len(labels) * max(1, len(variants) / 3) + 2.5), 3.6)
    for ax, metric in zip(axes, metrics):
        shown = pd.concat([s[s["metric"] == metric] for s in overall.values()])
        present = [v for v in variants if v in set(shown["variant"])]
        width = 0.8 / max(1, len(present))
        for j, variant in enumerate(present):
            xs, rows = [], []
            for i, label in enumerate(labels):
                row = overall[label][(overall[label]["metric"] == metric) & (overall[label]["variant"] == variant)]
                if len(row) and np.isfinite(row["mean"].iloc[0]):
                    xs.append(i + (j - (len(present) - 1) / 2) * width)
                    rows.append(row.iloc[0])
            if rows:
                frame = pd.DataFrame(rows)
                ax.errorbar(xs, frame["mean"], yerr=_errors(frame["mean"], frame["ci95_low"], frame["ci95_high"]),
                            fmt="o", ms=5, capsize=3, color=colors[variant], label=variant)
        if _is_proportion(shown):
            ax.set_ylim(-0.03, 1.03)
            ax.set_ylabel("proportion (95% Wilson CI)")
        else:
            lo = np.nanmin(shown["ci95_low"].fillna(shown["mean"]).to_numpy(dtype=float))
            hi = np.nanmax(shown["ci95_high"].fillna(shown["mean"]).to_numpy(dtype=float))
            if np.isfinite(lo) and np.isfinite(hi):
                pad = 0.25 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.05
                ax.set_ylim(lo - pad, hi + pad)
            ax.set_ylabel("mean (95% t CI)")
        ax.set_xlim(-0.6, len(labels) - 0.4)
        ax.set_xticks(np.arange(len(labels)), labels if len(labels) > 1 else [""],
                      rotation=20 if len(labels) > 3 else 0)
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(metric)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_paired(summaries: dict[str, pd.DataFrame], path: Path) -> Path | None:
    """Paired difference from dm (same prompt and seed) per variant and run, with 95% CIs; the
    axis always shows 0, and proportions' differences stay within [-1, 1]."""
    metrics = _metrics_with(summaries, "diff_vs_dm_mean")
    if not metrics:
        return None
    colors = variant_colors(v for s in summaries.values() for v in s["variant"])
    height = 1.4 + 0.45 * max(2, sum(len(set(s["variant"])) - 1 for s in summaries.values()))
    fig, axes = _metric_axes(len(metrics), 6.5, height)
    for ax, metric in zip(axes, metrics):
        names, means, lows, highs, cols, methods = [], [], [], [], [], set()
        proportion = False
        for label, s in summaries.items():
            rows = s[(s["metric"] == metric) & (s["category"] == ALL) & (s["variant"] != BASELINE)]
            proportion = proportion or _is_proportion(s[(s["metric"] == metric) & (s["category"] == ALL)])
            for variant in order_variants(rows["variant"]):
                row = rows[rows["variant"] == variant].iloc[0]
                if not np.isfinite(row["diff_vs_dm_mean"]):
                    continue
                names.append(f"{label}: {variant}" if len(summaries) > 1 else variant)
                means.append(row["diff_vs_dm_mean"])
                lows.append(row["diff_vs_dm_ci95_low"])
                highs.append(row["diff_vs_dm_ci95_high"])
                cols.append(colors[variant])
                methods.add(METHOD_NAMES.get(row["diff_vs_dm_ci95_method"], str(row["diff_vs_dm_ci95_method"])))
        y = np.arange(len(names))[::-1]
        ax.axvline(0.0, color="k", lw=0.8)
        errors = _errors(means, lows, highs)
        for i, (yi, mean, color) in enumerate(zip(y, means, cols)):
            ax.errorbar([mean], [yi], xerr=errors[:, i:i + 1], fmt="o", color=color, capsize=3)
        ends = np.array([*lows, *highs, *means, 0.0], dtype=float)
        ends = ends[np.isfinite(ends)]
        reach = max(np.abs(ends).max() * 1.15, 0.1 if proportion else 1e-3)
        ax.set_xlim(max(-reach, -1.02) if proportion else -reach, min(reach, 1.02) if proportion else reach)
        ax.set_yticks(y, names)
        ax.set_ylim(-0.7, max(len(names), 1) - 0.3)
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(f"{metric}: paired difference vs {BASELINE}")
        ax.set_xlabel(f"variant - {BASELINE}, same prompt and seed\n95% CI: {', '.join(sorted(methods)) or '-'}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def primary_metric(results: pd.DataFrame) -> str:
    """The metric shown under grid images: an exact score where there is one, then a video's mean
    alignment over its frames (not its consistency), else the first."""
    metrics = sorted(results["metric"].unique())
    exact = [m for m in metrics if m.endswith("/exact")]
    frames = [m for m in metrics if m.endswith("/frame_mean")]
    return (exact or frames or metrics)[0]


def plot_grid(run_dir: Path, path: Path, pairs: int = 4, results: pd.DataFrame | None = None) -> Path:
    """Image grid of the run's variants (and masks) for the first `pairs` (prompt, seed) pairs."""
    manifest = read_manifest(run_dir)
    columns = grid_columns(run_dir, manifest)
    groups = list(manifest.groupby(["prompt_idx", "seed"], sort=True))[:pairs]
    fig, axes = plt.subplots(len(groups), len(columns), figsize=(2.3 * len(columns), 2.5 * len(groups)),
                             squeeze=False)
    metric = primary_metric(results) if results is not None and len(results) else None
    for r, ((prompt_idx, seed), group) in enumerate(groups):
        files = dict(zip(group["variant"], group["file"]))
        index_of = dict(zip(group["variant"], group["image_idx"]))
        for c, (title, column) in enumerate(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if column.startswith("mask:"):
                variant = column[len("mask:"):]
                file = mask_files(run_dir, index_of[variant], [variant]).get(variant) if variant in index_of else None
            else:
                file = run_dir / files[column] if column in files else None
            if file is not None and file.is_file():
                with Image.open(file) as im:
                    ax.imshow(np.asarray(im.convert("RGB")))
            else:
                ax.text(0.5, 0.5, "absent", ha="center", va="center", transform=ax.transAxes, color="0.5")
            title = title if r == 0 else ""
            if metric is not None and column in files:
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


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _video(path: Path, page_folder: Path) -> str:
    """A looping video (MP4) or animation (GIF) linked from the report page, not embedded."""
    src = html.escape(Path(path).resolve().relative_to(page_folder.resolve()).as_posix())
    if path.suffix == ".gif":
        return f'<img src="{src}" alt="{src}">'
    return f'<video src="{src}" autoplay loop muted playsinline controls></video>'


def video_table(run: Path, page_folder: Path, pairs: int = 4) -> str:
    """The first ``pairs`` videos of every variant side by side (and asyndm's mask video), playing from
    the run folder's videos/ and masks/; '' for a run without videos. The grid above shows their key frames."""
    if not (run / "videos").is_dir():
        return ""
    manifest = read_manifest(run)
    variants = order_variants(manifest["variant"].unique())
    rows = []
    for idx in list(dict.fromkeys(manifest["image_idx"]))[:pairs]:
        cells = []
        for variant in variants:
            found = [run / video_file(idx, variant, e) for e in VIDEO_FORMATS if (run / video_file(idx, variant, e)).is_file()]
            cells.append(f"<td>{_video(found[0], page_folder) if found else ''}</td>")
        masks = [run / mask_video_file(idx, v, e) for v in variants for e in VIDEO_FORMATS
                 if (run / mask_video_file(idx, v, e)).is_file()]
        cells.append(f"<td>{_video(masks[0], page_folder) if masks else ''}</td>")
        prompt = manifest.loc[manifest["image_idx"] == idx, "prompt"].iloc[0]
        rows.append(f"<tr><th>{html.escape(str(prompt))}<br>#{idx}</th>{''.join(cells)}</tr>")
    header = "".join(f"<th>{html.escape(v)}</th>" for v in variants) + "<th>mask</th>"
    return ("<h3>Videos</h3><p class='note'>Played from the run folder (videos/, masks/); open the report "
            "from there.</p><table class='videos'><tr><th></th>" + header + "</tr>" + "".join(rows) + "</table>")


METHODS_NOTE = ("<p class='note'>Intervals are 95%. Continuous metrics: Student t for the mean and for "
                "the mean paired difference. Proportions (metrics whose every value is 0 or 1, such as "
                "<code>shapes/exact</code>): the Wilson score interval, which stays inside [0, 1], and a "
                "percentile bootstrap over the (prompt, seed) pairs for the difference (10,000 resamples, "
                "seed 0; none below 10 pairs), which stays inside [-1, 1]. summary.csv names the method of each row "
                "(<code>ci95_method</code>, <code>diff_vs_dm_ci95_method</code>).</p>")


def build_report(folder: Path, pairs: int = 4, categories: bool = False) -> Path:
    """Write `folder/report.html` and `folder/report/*.png`; returns the html path."""
    folder = Path(folder)
    runs = find_runs(folder)
    if not runs:
        raise FileNotFoundError(f"no run folder (config.yaml + manifest.csv) in or below {folder}; "
                                f"pass a folder written by `asyndm`")
    out = folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    labels = run_labels(runs)
    summaries = {labels[r]: read_summary(r / "summary.csv") for r in runs if (r / "summary.csv").is_file()}
    parts = [f"<h1>asyndm report</h1><p><code>{html.escape(str(folder.resolve()))}</code>: "
             f"{len(runs)} run{'s' if len(runs) != 1 else ''}</p>"]
    if summaries:
        scope = "per category" if categories else "all prompts; <code>--categories</code> adds a row per category"
        parts.append(f"<h2>Metrics</h2><p class='note'>Mean [95% CI] and the paired difference from "
                     f"{BASELINE} on the same prompt and seed ({scope}).</p>")
        parts.append(metric_tables(summaries, categories))
        parts.append(METHODS_NOTE)
        means = plot_metrics(summaries, out / "metrics.png")
        if means is not None:
            parts.append(_img(means, "metric means with 95% intervals"))
        paired = plot_paired(summaries, out / "paired_vs_dm.png")
        if paired is not None:
            parts.append(f"<h2>Paired difference from {BASELINE}</h2>" + _img(paired, "paired differences from dm"))
    else:
        parts.append("<p><b>No metrics were computed</b> (no summary.csv): run "
                     "<code>asyndm-eval &lt;run_dir&gt; eval=[clip]</code> to score the images.</p>")

    timesteps = plot_timesteps({labels[r]: r for r in runs}, out / "timesteps.png")
    without = [labels[r] for r in runs if not (r / "timesteps.csv").is_file()
               and not list(r.glob("timesteps.shard-*-of-*.csv"))]
    parts.append("<h2>Timesteps: items and background</h2>")
    if timesteps is not None:
        parts.append("<p class='note'>Mean timestep the model saw per sampling step, over each image's item "
                     "pixels (its final mask; solid) and the other pixels (dashed), averaged over images, "
                     "beside the theoretical curves (black: the concave curve for each k of the prompts, "
                     "dotted: the background's linear curve).</p>" + _img(timesteps, "timesteps per step"))
    if without:
        parts.append(f"<p class='note'>No timesteps.csv in {html.escape(', '.join(without))}: "
                     f"the folder was sampled before runs recorded their timesteps.</p>")

    for i, run in enumerate(runs):
        label = labels[run]
        parts.append(f"<h2>Run {html.escape(label)}</h2><p><code>{html.escape(str(run))}</code></p>")
        if label not in summaries and len(runs) > 1:
            parts.append("<p>No metrics were computed for this run.</p>")
        results = read_results(run) if (run / "results.csv").is_file() else None
        grid = plot_grid(run, out / (f"grid_{i:02}.png" if len(runs) > 1 else "grid.png"), pairs=pairs, results=results)
        parts.append(_img(grid, f"image grid of {label}"))
        parts.append(video_table(run, folder, pairs))
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>asyndm report</title>"
            f"<style>{STYLE}</style></head><body>" + "\n".join(parts) + "</body></html>")
    path = folder / "report.html"
    atomic_write_text(path, page)
    return path


# --- a real browser --------------------------------------------------------------------------

def find_chromium() -> str | None:
    """A Chromium or Chrome executable on PATH (Debian: `apt-get install chromium`)."""
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 3000, timeout: float = 120) -> Path:
    """Render `page` in headless Chromium and save a `width` x `height` screenshot to `png`."""
    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError("no Chromium found (tried " + ", ".join(CHROMIUM_NAMES) + "); on Debian or "
                                "Ubuntu: apt-get install chromium")
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="asyndm-chromium-") as profile:
        command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                   "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}",
                   f"--window-size={width},{height}", f"--screenshot={png}", Path(page).resolve().as_uri()]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or not png.is_file():
        raise RuntimeError(f"{browser} could not render {page} (exit {done.returncode}): {done.stderr[-800:]}")
    return png


def main(argv: list[str] | None = None) -> int:
    argv = take_debug_flag(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(prog="asyndm-report", description=__doc__.split("\n")[0],
                                     epilog="--debug (or ASYNDM_DEBUG=1): show the traceback of an error")
    parser.add_argument("folder", type=Path, help="a run folder, or a sweep folder holding run folders")
    parser.add_argument("--pairs", type=int, default=4, help="(prompt, seed) rows in each image grid")
    parser.add_argument("--categories", action="store_true", help="a table row per prompt category too")
    parser.add_argument("--screenshot", type=Path, metavar="PNG",
                        help="also render report.html in headless Chromium and save a screenshot")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        print(f"asyndm-report: error: {args.folder} is not a folder; pass a run folder written by `asyndm` "
              f"(the one holding manifest.csv) or a sweep folder", file=sys.stderr)
        return 2
    try:
        return _report(args)
    except (OSError, ValueError, KeyError) as error:  # a folder that is not (or no longer) a run, a damaged file
        if debugging():
            raise
        print(f"asyndm-report: error: {' '.join(str(error).split())}; rerun the asyndm command that made the "
              f"run to restore damaged files", file=sys.stderr)
        return 2


def _report(args) -> int:
    if is_sweep_folder(args.folder):  # one row per job × variant × metric; failed jobs included
        write_sweep_summary(args.folder)
        print(args.folder / SUMMARY_FILE)
        if not find_runs(args.folder):
            return 0  # no job got as far as sampling: the summary lists them as failed
    page = build_report(args.folder, pairs=args.pairs, categories=args.categories)
    print(page)
    if args.screenshot:
        try:
            print(screenshot(page, args.screenshot))
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as error:
            print(f"asyndm-report: error: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
