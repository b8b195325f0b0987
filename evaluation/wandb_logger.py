"""Log a run to Weights & Biases: one wandb run per run folder, shard and job type, resumed on rerun.

- Identity: the wandb run id is derived from the run's identity, ``asyndm-<config_hash>[-shard<i>of<n>]-<job_type>``,
  and the run is started with ``resume="allow"``, so rerunning a job (a resumed sampling run, or
  ``asyndm-eval`` again) continues the same wandb run instead of adding one with the same name.
  ``job_type`` is ``sample`` (``asyndm``) or ``eval`` (``asyndm-eval``). Every run has a group: the
  sweep folder's name for a job of a sweep, else the run folder's name, so the sampling run and
  its later evaluations sit together. Tags: the experiment preset (and ``smoke-<size>``) the run
  was made with, plus ``logger.tags``.
- Files: results.csv, summary.csv and timesteps.csv go to wandb as one artifact (type ``results``).
- Where wandb writes: the run's own files go into ``<run_dir>/wandb``, and so do wandb's artifact
  cache and staging unless the user chose their own ``WANDB_CACHE_DIR`` / ``WANDB_DATA_DIR``
  (wandb 0.31 otherwise writes under ~/.cache and ~/.local/share even offline). The user's
  ``WANDB_CONFIG_DIR`` (or ~/.config/wandb), ``WANDB_BASE_URL`` and credentials are left alone, so
  a ``wandb login --host ...`` keeps working.
- A wandb failure never loses a result: results.csv and summary.csv are written before logging,
  and any wandb error becomes a warning.
"""

from __future__ import annotations

import configparser
import contextlib
import math
import netrc
import os
import re
import warnings
from pathlib import Path
from typing import Iterator, Mapping

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from asyndm.config import config_hash
from evaluation.io import grid_columns, mask_files, read_manifest
from evaluation.timesteps import plot_timesteps, read_timesteps, step_means
from evaluation.variants import order_variants

# The folders wandb writes outside the run's own folder; those the user did not set point into it.
CACHE_VARS = ("WANDB_CACHE_DIR", "WANDB_DATA_DIR")
WANDB_DIR_VARS = ("WANDB_DIR", *CACHE_VARS, "WANDB_CONFIG_DIR")  # every directory variable wandb reads
MODES = ("online", "offline", "disabled", "shared")
JOB_TYPES = ("sample", "eval")
DEFAULT_HOST = "https://api.wandb.ai"
ARTIFACT_FILES = ("results.csv", "summary.csv", "timesteps.csv")


# --- the user's own wandb settings -------------------------------------------------------------

def user_settings(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The ``[default]`` section of the user's wandb settings file (``WANDB_CONFIG_DIR/settings``,
    else ``~/.config/wandb/settings``): where ``wandb login --host`` keeps ``base_url`` and
    ``wandb offline`` / ``wandb online`` keep ``mode``. Empty when there is none."""
    config_dir = environ.get("WANDB_CONFIG_DIR") or str(Path(environ.get("HOME") or Path.home()) / ".config" / "wandb")
    parser = configparser.ConfigParser()
    try:
        parser.read(Path(config_dir).expanduser() / "settings")
    except (configparser.Error, OSError):
        return {}
    return dict(parser["default"]) if parser.has_section("default") else {}


def has_credentials(environ: Mapping[str, str] = os.environ, settings: Mapping[str, str] | None = None) -> bool:
    """An API key at hand: ``WANDB_API_KEY``, or a netrc entry (``NETRC`` or ~/.netrc) for the
    base URL's host (``WANDB_BASE_URL``, the settings' ``base_url``, else api.wandb.ai)."""
    if environ.get("WANDB_API_KEY"):
        return True
    settings = user_settings(environ) if settings is None else settings
    url = environ.get("WANDB_BASE_URL") or settings.get("base_url") or DEFAULT_HOST
    host = re.sub(r"^[a-z]+://", "", url).split("/")[0]
    path = environ.get("NETRC") or str(Path(environ.get("HOME") or Path.home()) / ".netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(cfg_mode: str | None, environ: Mapping[str, str] = os.environ,
                 settings: Mapping[str, str] | None = None) -> str:
    """The wandb mode, most specific first: ``logger.mode`` of the run's config; ``WANDB_MODE``;
    the ``mode`` in the user's wandb settings file; online when credentials are at hand (see
    ``has_credentials``); else offline, so a machine without an account still logs, locally."""
    if cfg_mode:
        if cfg_mode not in MODES:
            raise ValueError(f"logger.mode={cfg_mode!r}: choose one of {', '.join(MODES)} (or null: automatic)")
        return cfg_mode
    if environ.get("WANDB_MODE"):
        return environ["WANDB_MODE"]
    settings = user_settings(environ) if settings is None else settings
    if settings.get("mode"):
        return settings["mode"]
    return "online" if has_credentials(environ, settings) else "offline"


@contextlib.contextmanager
def _wandb_env(run_dir: Path) -> Iterator[Path]:
    """wandb's cache and staging folders into ``run_dir/wandb`` where the user has not chosen
    their own; everything else (config dir, base URL, credentials) is the user's. Restored after."""
    root = run_dir / "wandb"
    root.mkdir(parents=True, exist_ok=True)
    chosen = {"WANDB_CACHE_DIR": root / "cache", "WANDB_DATA_DIR": root / "data"}
    chosen = {k: v for k, v in chosen.items() if not os.environ.get(k)}
    saved = {k: os.environ.get(k) for k in (*chosen, "WANDB_MODE")}
    try:
        for key, path in chosen.items():
            Path(path).mkdir(parents=True, exist_ok=True)
            os.environ[key] = str(path)
        if os.environ.get("WANDB_MODE") == "":
            del os.environ["WANDB_MODE"]  # wandb 0.31 rejects an empty WANDB_MODE
        yield root
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --- the run's identity ------------------------------------------------------------------------

def _saved_config(run_dir: Path) -> DictConfig | None:
    try:
        return OmegaConf.load(run_dir / "config.yaml")
    except Exception:  # noqa: BLE001 - not a finished sampling folder: the live config decides
        return None


def run_identity(run_dir: Path, cfg: DictConfig) -> tuple[str, int, int]:
    """(config_hash, shard index, shard count) of the run: the hash that ``asyndm`` wrote into the
    run's config.yaml (the same for a rerun of the same job), else the live config's."""
    saved = _saved_config(run_dir)
    cfg_hash = (saved.get("config_hash") if saved is not None else None) or cfg.get("config_hash")
    if not cfg_hash:
        cfg_hash = config_hash(cfg)
    shard = cfg.get("shard") or {}
    return str(cfg_hash), int(shard.get("index", 0) or 0), int(shard.get("count", 1) or 1)


def wandb_run_id(cfg_hash: str, shard_index: int, shard_count: int, job_type: str) -> str:
    """``asyndm-<hash>[-shard<i>of<n>]-<job_type>``: stable across reruns of the same job."""
    shard = f"-shard{shard_index}of{shard_count}" if shard_count > 1 else ""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"asyndm-{cfg_hash}{shard}-{job_type}")[:128]


def _hydra_choices(run_dir: Path) -> dict[str, str]:
    """The config group choices of the job (experiment, smoke, ...): from the running Hydra job,
    else from the run folder's .hydra/hydra.yaml (asyndm-eval)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return {str(k): v for k, v in HydraConfig.get().runtime.choices.items()}
    except Exception:  # noqa: BLE001 - tags are optional
        pass
    try:
        saved = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml")
        return {str(k): v for k, v in OmegaConf.to_container(saved.hydra.runtime.choices).items()}
    except Exception:  # noqa: BLE001 - a run made outside Hydra (the Python API) has no choices
        return {}


def run_tags(run_dir: Path, cfg: DictConfig) -> list[str]:
    """The experiment preset, ``smoke-<size>`` for a smoke run, then ``logger.tags``."""
    choices = _hydra_choices(run_dir)
    tags = []
    if choices.get("experiment") not in (None, "null", "None"):
        tags.append(str(choices["experiment"]))
    if choices.get("smoke") not in (None, "null", "None"):
        tags.append(f"smoke-{choices['smoke']}")
    logger = cfg.get("logger") or {}
    tags += [str(t) for t in (logger.get("tags") or [])]
    return list(dict.fromkeys(t[:64] for t in tags))


def run_group(run_dir: Path) -> str:
    """The sweep folder's name for a job of a sweep (a folder above it holds multirun.yaml), else
    the run folder's name."""
    run_dir = Path(run_dir).resolve()
    for parent in run_dir.parents:
        if (parent / "multirun.yaml").is_file():
            return parent.name
    return run_dir.name


# --- what is logged ----------------------------------------------------------------------------

def summary_metrics(summary: pd.DataFrame) -> dict[str, float]:
    """`{variant}/{metric}/mean` etc. for the overall (category `all`) rows of a summary."""
    out: dict[str, float] = {}
    for row in summary[summary["category"] == "all"].itertuples(index=False):
        for stat in ("mean", "std", "ci95_low", "ci95_high", "n", "diff_vs_dm_mean",
                     "diff_vs_dm_ci95_low", "diff_vs_dm_ci95_high"):
            value = float(getattr(row, stat))
            if not math.isnan(value):
                out[f"{row.variant}/{row.metric}/{stat}"] = value
    return out


def image_table_rows(run_dir: Path, results: pd.DataFrame | None,
                     limit: int) -> tuple[list[str], list[str], list[list]]:
    """(columns, image columns, rows) of the per-(prompt, seed) table; images as file paths or None.

    One image column per variant (registered variants first), then one mask column per variant
    that saved masks (asyndm's titled ``mask``, any other's ``<variant> mask``).
    """
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    variants = order_variants(manifest["variant"])
    mask_columns = {column[len("mask:"):]: title for title, column in grid_columns(run_dir, manifest, limit)
                    if column.startswith("mask:")}
    masked = list(mask_columns)
    metrics = sorted(results["metric"].unique()) if results is not None and len(results) else []
    values = {}
    if metrics:
        values = results.set_index(["prompt_idx", "seed", "variant", "metric"])["value"].to_dict()
    columns = ["prompt_idx", "seed", "prompt", "category", *variants, *mask_columns.values(),
               *[f"{v}/{m}" for v in variants for m in metrics]]
    rows = []
    for (prompt_idx, seed), group in list(manifest.groupby(["prompt_idx", "seed"], sort=True))[:limit]:
        by_variant = dict(zip(group["variant"], group["file"]))
        index_of = dict(zip(group["variant"], group["image_idx"]))
        first = group.iloc[0]
        masks = {v: mask_files(run_dir, index_of[v], [v]).get(v) for v in masked if v in index_of}
        row = [int(prompt_idx), int(seed), first["prompt"], first["category"],
               *[str(run_dir / by_variant[v]) if v in by_variant else None for v in variants],
               *[str(masks[v]) if masks.get(v) is not None else None for v in masked],
               *[values.get((prompt_idx, seed, v, m), math.nan) for v in variants for m in metrics]]
        rows.append(row)
    return columns, [*variants, *mask_columns.values()], rows


def _log_contents(run, wandb, run_dir: Path, summary: pd.DataFrame | None, results: pd.DataFrame | None,
                  table_rows: int) -> None:
    if summary is not None:
        run.summary.update(summary_metrics(summary))
        run.log({"summary": wandb.Table(dataframe=summary)})
    columns, image_cols, rows = image_table_rows(run_dir, results, table_rows)
    table = wandb.Table(columns=columns)
    for row in rows:
        table.add_data(*[wandb.Image(v) if c in image_cols and v else v for c, v in zip(columns, row)])
    run.log({"images": table})

    trace = read_timesteps(run_dir)
    if trace is not None:  # the report's timestep figure, for this run alone
        figure = plot_timesteps({run_dir.name: run_dir}, run_dir / "report" / "timesteps.png")
        run.log({"timesteps": wandb.Image(str(figure)),
                 "timesteps_per_step": wandb.Table(dataframe=step_means(trace))})

    files = [run_dir / name for name in ARTIFACT_FILES if (run_dir / name).is_file()]
    if files:
        artifact = wandb.Artifact(f"results-{run.id}", type="results",
                                  description=f"results of {run_dir.name}: " + ", ".join(f.name for f in files))
        for file in files:
            artifact.add_file(str(file))
        run.log_artifact(artifact)


def log_run(run_dir: Path, cfg: DictConfig, summary: pd.DataFrame | None = None,
            results: pd.DataFrame | None = None, name: str | None = None, group: str | None = None,
            job_type: str = "sample") -> bool:
    """Log config, summary metrics, an image table, the timestep figure and the results files of
    `run_dir` (see the module docstring); True when wandb finished cleanly, else a warning."""
    run_dir = Path(run_dir).resolve()
    logger = cfg.get("logger") or {}
    try:
        if job_type not in JOB_TYPES:
            raise ValueError(f"job_type={job_type!r}: use one of {JOB_TYPES}")
        import wandb

        cfg_hash, shard_index, shard_count = run_identity(run_dir, cfg)
        run_id = logger.get("run_id") or wandb_run_id(cfg_hash, shard_index, shard_count, job_type)
        with _wandb_env(run_dir):
            run = wandb.init(
                project=logger.get("project") or "asyndm", entity=logger.get("entity"),
                id=run_id, resume="allow", job_type=job_type, tags=run_tags(run_dir, cfg),
                group=group or logger.get("group") or run_group(run_dir),
                name=name or logger.get("run_name") or run_dir.name,
                config={**OmegaConf.to_container(cfg, resolve=True), "config_hash": cfg_hash},
                dir=str(run_dir), mode=resolve_mode(logger.get("mode")), reinit="finish_previous")
            try:
                _log_contents(run, wandb, run_dir, summary, results, int(logger.get("table_rows") or 64))
            finally:
                run.finish()
                # wandb reads its environment once per session: end it, so that the next job of a
                # multirun (another run folder) starts a session with its own folders.
                wandb.teardown()
        return True
    except Exception as error:  # noqa: BLE001 - results are safe on disk; wandb must not fail a run
        warnings.warn(f"wandb logging of {run_dir} failed ({type(error).__name__}: {error}); "
                      f"results.csv and summary.csv in the run folder are complete")
        return False
