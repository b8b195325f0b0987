"""What happens after sampling: score the run, summarise it, print it, log it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from asyndm.run_folder import write_table
from evaluation.scoring import score_run
from evaluation.summary import format_summary, summarize


def _hydra_names(run_dir: Path) -> tuple[str | None, str | None]:
    """(name, group) for loggers from the Hydra job when one is running: group = sweep folder in a
    multirun. Outside a Hydra job the logger derives both from the run folder."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return None, None
        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            return run_dir.name, Path(hc.sweep.dir).name
        return run_dir.name, None
    except Exception:  # logging names are cosmetic; never fail a run over them
        return None, None


def run_after_sampling(run_dir: Path, cfg: DictConfig, job_type: str = "sample") -> pd.DataFrame | None:
    """Score `run_dir` with every evaluator in `cfg.eval`, write results.csv and summary.csv, print
    the summary, then log to `cfg.logger`. Returns the summary, or None when `cfg.eval` is empty.

    `job_type` names the invocation for the logger: `sample` (asyndm), `eval` (asyndm-eval). The
    files are written before any logging, so a logger's failure never loses a result.
    """
    run_dir = Path(run_dir)
    eval_cfg = OmegaConf.to_container(cfg.get("eval") or {}, resolve=True) if cfg.get("eval") else {}
    summary = results = None
    if eval_cfg:
        results = score_run(run_dir, eval_cfg, device=cfg.get("device"), progress=cfg.get("progress", True))
        summary = summarize(results)
        write_table(run_dir / "summary.csv", summary)
        print(f"\n{run_dir}: {len(results)} scores\n{format_summary(summary)}\n", flush=True)

    logger = cfg.get("logger") or {}
    kind = logger.get("name", "none") if logger else "none"
    if kind == "wandb":
        from evaluation.wandb_logger import log_run

        name, group = _hydra_names(run_dir)
        log_run(run_dir, cfg, summary=summary, results=results,
                name=logger.get("run_name") or name, group=logger.get("group") or group, job_type=job_type)
    elif kind not in ("none", None):
        raise ValueError(f"unknown logger.name={kind!r}; use logger=none or logger=wandb")
    return summary
