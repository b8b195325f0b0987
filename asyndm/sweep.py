"""Sweeps: each job's status in its folder, and one table that compares the jobs.

- ``sweep_job(run_dir, cfg)`` wraps one run (asyndm/run.py). It writes ``status.json`` (running,
  then completed or failed with the error). In a multirun a failed job is recorded and the sweep
  goes on: Hydra's sweeper would stop at the first exception and never call ``on_multirun_end``.
  Where several GPUs are visible and ``device=auto``, each job of a multirun claims a free GPU.
- ``SweepSummary``, the Hydra callback of conf/config.yaml, writes ``sweep_summary.csv`` in the
  sweep folder at the end of a multirun and exits with status 1 when a job failed.
- ``write_sweep_summary(sweep_dir)`` does the same on demand (``asyndm-report <sweep folder>``).

sweep_summary.csv has one row per job × variant × metric (the ``all`` rows of each job's
summary.csv) with the job's override values as columns. A job without metrics gets one row with
``status=failed`` and the reason in ``note``, never no row.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
import traceback
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .run_folder import atomic_write_bytes, shard_suffix, write_table

log = logging.getLogger(__name__)

SUMMARY_FILE = "sweep_summary.csv"
STATUS_FILE = "status.json"
# The interval methods last: t, or wilson / paired_bootstrap for 0/1 metrics (evaluation/summary.py).
METRIC_COLUMNS = ["variant", "metric", "n", "mean", "std", "ci95_low", "ci95_high", "n_pairs",
                  "diff_vs_dm_mean", "diff_vs_dm_ci95_low", "diff_vs_dm_ci95_high", "ci95_method",
                  "diff_vs_dm_ci95_method"]
# Folders inside a job folder that never hold another job.
RUN_SUBFOLDERS = {".hydra", ".submitit", ".gpu_locks", "images", "latents", "masks", "report", "wandb"}
NOT_FINISHED = "did not finish (killed, preempted or still running): rerun the same command to resume it"


# --- one job ---------------------------------------------------------------------------------

def write_status(path: Path, status: str, **fields) -> None:
    record = {"status": status, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "host": socket.gethostname(), "pid": os.getpid(), **fields}
    atomic_write_bytes(Path(path), json.dumps(record, indent=2, default=str).encode())


def _hydra_job():
    """(is multirun, job number, sweep dir) of the running Hydra job; (False, 0, None) outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return False, 0, None
        hc = HydraConfig.get()
        multirun = hc.mode == RunMode.MULTIRUN
        return multirun, int(hc.job.get("num") or 0), Path(str(hc.sweep.dir)) if multirun else None
    except Exception:  # noqa: BLE001 - no Hydra job: a plain function call
        return False, 0, None


@contextmanager
def claim_gpu(lock_dir: Path, count: int, first: int = 0, poll_s: float = 2.0) -> Iterator[int]:
    """Hold an exclusive lock on one of ``count`` GPUs (tried from ``first``), waiting for a free one.

    Locks are ``flock``s on files in ``lock_dir``: released on exit, and by the OS when a job dies.
    """
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        for offset in range(count):
            gpu = (first + offset) % count
            handle = open(lock_dir / f"gpu{gpu}.lock", "w")  # noqa: SIM115 - held for the job's duration
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            try:
                yield gpu
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        if not waited:
            log.info("all %d GPUs are busy with other jobs of this sweep; waiting for one", count)
            waited = True
        time.sleep(poll_s)


@contextmanager
def _job_gpu(multirun: bool, job_num: int, sweep_dir: Path | None, device) -> Iterator[None]:
    if not multirun or str(device) != "auto" or sweep_dir is None:
        yield
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < 2:
        yield
        return
    with claim_gpu(sweep_dir / ".gpu_locks", count, first=job_num) as gpu:
        torch.cuda.set_device(gpu)  # device=auto and the evaluators' "cuda" now mean this GPU
        log.info("job %d runs on cuda:%d", job_num, gpu)
        yield


@contextmanager
def sweep_job(run_dir: Path, cfg: DictConfig) -> Iterator[None]:
    """Record the run's status in ``run_dir``; in a multirun, record a failure and carry on."""
    shard = cfg.get("shard") or {"index": 0, "count": 1}
    path = Path(run_dir) / f"status{shard_suffix(shard['index'], shard['count'])}.json"
    multirun, job_num, sweep_dir = _hydra_job()
    write_status(path, "running")
    try:
        with _job_gpu(multirun, job_num, sweep_dir, cfg.get("device")):
            yield
    except Exception as err:  # noqa: BLE001 - KeyboardInterrupt and SystemExit (preemption) pass
        try:
            write_status(path, "failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc()[-4000:])
        except (OSError, ValueError) as status_error:  # a full disk: the run's own error is the one to report
            log.warning("could not record the failure in %s: %s", path, status_error)
        if not multirun:
            raise
        log.error("job failed (the sweep goes on; see %s): %s: %s", path, type(err).__name__, err)
        print(f"asyndm: job {run_dir} failed: {err}", file=sys.stderr, flush=True)
    else:
        write_status(path, "completed")


# --- the sweep table -------------------------------------------------------------------------

def _override_key(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def _job_overrides(overrides: list[str], ignored: set[str]) -> dict[str, str]:
    """Override values by key, without Hydra's settings and the keys that do not name a job folder."""
    pairs = (_override_key(str(o)) for o in overrides)
    return {k: v for k, v in pairs if not k.startswith("hydra") and k not in ignored}


def _ignored_keys(multirun_cfg: DictConfig | None) -> set[str]:
    """hydra.job.config.override_dirname.exclude_keys (run_dir, progress, device, ...)."""
    try:
        return {str(k) for k in multirun_cfg.hydra.job.config.override_dirname.exclude_keys}
    except Exception:  # noqa: BLE001 - no multirun config: show every override
        return set()


def job_folders(sweep_dir: Path) -> list[Path]:
    """Every folder below ``sweep_dir`` that a Hydra job wrote (it holds .hydra/overrides.yaml)."""
    found = []
    for root, dirs, _ in os.walk(sweep_dir):
        here = Path(root)
        if here != Path(sweep_dir) and (here / ".hydra" / "overrides.yaml").is_file():
            found.append(here)
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if d not in RUN_SUBFOLDERS)
    return found


def is_sweep_folder(folder: Path) -> bool:
    folder = Path(folder)
    return (folder / "multirun.yaml").is_file() or bool(job_folders(folder))


def planned_jobs(multirun_cfg: DictConfig) -> list[tuple[str, list[str]]] | None:
    """(job folder, overrides) of every job a multirun config launches, in launch order.

    Recomputes what Hydra's BasicSweeper does, so jobs that never started (no folder) are listed
    too. None where that cannot be known (another sweeper, or a custom hydra.sweep.subdir).
    """
    try:
        from hydra._internal.config_loader_impl import get_overrides_dirname
        from hydra.core.override_parser.overrides_parser import OverridesParser

        from .sweep_plan import sweep_jobs

        hydra_cfg = multirun_cfg.hydra
        if OmegaConf.to_container(hydra_cfg.sweep, resolve=False).get("subdir") != "${hydra.job.override_dirname}":
            return None
        if not str(hydra_cfg.sweeper.get("_target_", "")).endswith("BasicSweeper"):
            return None
        jobs = sweep_jobs(hydra_cfg)
        parser = OverridesParser.create()
        naming = hydra_cfg.job.config.override_dirname
        return [(get_overrides_dirname(parser.parse_overrides(job), list(naming.exclude_keys), naming.item_sep,
                                       naming.kv_sep), job) for job in jobs]
    except Exception as err:  # noqa: BLE001 - a missing plan only loses the never-started rows
        log.debug("cannot recompute the sweep's jobs: %s", err)
        return None


def owner_alive(record: dict) -> bool | None:
    """Whether the process a "running" status names still runs: False when it ran on this host and is
    gone (killed, crashed), None where that cannot be told (another host, no pid)."""
    pid, host = record.get("pid"), record.get("host")
    if record.get("status") != "running" or not pid or host != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, ValueError):
        return None
    return True


def job_state(job_dir: Path) -> tuple[str, str]:
    """('ok' | 'failed', note) of one job folder, from its status file(s) and summary.csv."""
    records = []
    for path in sorted(job_dir.glob("status*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            records.append({"status": "running"})  # unreadable: treat as unfinished
    has_summary = (job_dir / "summary.csv").is_file()
    failed = [r for r in records if r.get("status") == "failed"]
    if failed:
        return "failed", str(failed[0].get("error") or "failed")
    unfinished = [r for r in records if r.get("status") != "completed"]
    if unfinished:
        dead = [r for r in unfinished if owner_alive(r) is False]
        if dead:
            return "failed", (f"interrupted: its process (pid {dead[0].get('pid')} on {dead[0].get('host')}) is gone; "
                              f"rerun the same command to resume it")
        return "failed", NOT_FINISHED
    if has_summary:
        return "ok", ""
    if records:
        if list(job_dir.glob("manifest.shard-*.csv")):
            return "ok", "a shard: no metrics until the shards are merged (python -m asyndm.shard)"
        return "ok", "no metrics: eval is empty"
    return "failed", "no summary.csv and no status.json: the job stopped before asyndm ran"


def _count_images(job_dir: Path) -> int:
    total = 0
    for path in job_dir.glob("manifest*.csv"):
        try:
            total += len(pd.read_csv(path, usecols=["file"]))
        except (OSError, ValueError):
            pass
    return total


def _job_rows(job: str, overrides: dict[str, str], job_dir: Path | None) -> list[dict]:
    base = {"job": job, **overrides}
    if job_dir is None:
        return [{**base, "status": "failed", "images": 0,
                 "note": "never started (no job folder; or not yet, in a running sweep): rerun the same command"}]
    status, note = job_state(job_dir)
    base.update(status=status, images=_count_images(job_dir), note=note)
    if status != "ok" or not (job_dir / "summary.csv").is_file():
        return [base]
    summary = pd.read_csv(job_dir / "summary.csv", keep_default_na=False, na_values=["", "nan", "NaN"])
    if "category" in summary.columns:
        summary = summary[summary["category"].astype(str) == "all"]
    rows = [{**base, **{c: row.get(c) for c in METRIC_COLUMNS}} for row in summary.to_dict("records")]
    return rows or [{**base, "note": "summary.csv is empty"}]


def _natural(value) -> tuple:
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def sweep_summary(sweep_dir: Path, multirun_cfg: DictConfig | None = None) -> pd.DataFrame:
    """The table of every job folder in ``sweep_dir`` and of every job the multirun config plans
    (``multirun_cfg``, else the sweep's multirun.yaml), started or not."""
    sweep_dir = Path(sweep_dir)
    if multirun_cfg is None and (sweep_dir / "multirun.yaml").is_file():
        try:
            multirun_cfg = OmegaConf.load(sweep_dir / "multirun.yaml")
        except Exception:  # noqa: BLE001 - an unreadable plan only loses the never-started rows
            multirun_cfg = None
    planned = planned_jobs(multirun_cfg) if multirun_cfg is not None else None
    ignored = _ignored_keys(multirun_cfg)
    folders = {str(p.relative_to(sweep_dir)): p for p in job_folders(sweep_dir)}
    jobs: dict[str, dict[str, str]] = {}
    for name, overrides in planned or []:
        jobs[name] = _job_overrides(overrides, ignored)
    found = {}
    for name, folder in folders.items():
        overrides = OmegaConf.load(folder / ".hydra" / "overrides.yaml")
        found[name] = _job_overrides(list(overrides), ignored)
    keys = list(dict.fromkeys(k for o in [*jobs.values(), *found.values()] for k in o))
    planned_names = list(jobs)
    extra = sorted((n for n in found if n not in jobs), key=lambda n: tuple(_natural(found[n].get(k)) for k in keys))
    jobs.update({n: found[n] for n in extra})
    rows = []
    for name in planned_names + extra:
        rows += _job_rows(name, jobs[name], folders.get(name))
    table = pd.DataFrame(rows, columns=["job", "status", *keys, *METRIC_COLUMNS, "images", "note"])
    return table.astype({"n": "Int64", "images": "Int64"})


def write_sweep_summary(sweep_dir: Path, multirun_cfg: DictConfig | None = None) -> pd.DataFrame:
    """Write ``sweep_dir/sweep_summary.csv`` and return it."""
    table = sweep_summary(sweep_dir, multirun_cfg)
    write_table(Path(sweep_dir) / SUMMARY_FILE, table)
    return table


def format_sweep_summary(table: pd.DataFrame) -> str:
    """A printable view: the overrides that differ between jobs, status, and the mean per variant."""
    fixed = set(METRIC_COLUMNS) | {"job", "status", "images", "note"}
    keys = [c for c in table.columns if c not in fixed and table[c].astype(str).nunique() > 1]
    shown = table[[*keys, "status", "variant", "metric", "n", "mean", "diff_vs_dm_mean", "note"]].copy()
    for column in ("mean", "diff_vs_dm_mean"):
        shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{float(v):.4f}")
    shown["note"] = shown["note"].fillna("").astype(str).map(lambda s: s if len(s) <= 60 else s[:57] + "...")
    return shown.astype(object).fillna("").to_string(index=False)


class SweepSummary(Callback):
    """Hydra callback: sweep_summary.csv at the end of a multirun; a failed job's status on job end."""

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        from hydra.core.utils import JobStatus

        if job_return.status != JobStatus.FAILED:
            return
        path = Path(str(config.hydra.runtime.output_dir)) / STATUS_FILE
        try:
            previous = json.loads(path.read_text()).get("status") if path.is_file() else None
        except (OSError, ValueError):
            previous = None
        if previous != "failed":  # asyndm's own record has the traceback; keep it
            err = job_return._return_value
            write_status(path, "failed", error=f"{type(err).__name__}: {err}")

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if config.get("dry_run"):  # every job printed its plan; nothing ran to summarise
            jobs = planned_jobs(config)
            count = f"{len(jobs)} jobs" if jobs is not None else "the jobs above"
            print(f"\ndry run of a sweep: {count} in {sweep_dir}; drop dry_run=true to run them", flush=True)
            return
        table = write_sweep_summary(sweep_dir, config)
        print(f"\n{sweep_dir / SUMMARY_FILE}:\n{format_sweep_summary(table)}\n", flush=True)
        failed = sorted(set(table.loc[table["status"] == "failed", "job"]))
        if failed:
            print(f"asyndm: {len(failed)} job(s) of the sweep failed: {', '.join(failed)} (see 'note' in "
                  f"{sweep_dir / SUMMARY_FILE}); rerun the same command to retry them", file=sys.stderr, flush=True)
            sys.exit(1)
