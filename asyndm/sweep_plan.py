"""What a multirun would launch, found with Hydra's own code and without writing anything.

Hydra's multirun creates the sweep folder (``multirun.yaml``) and each job's folder (``.hydra/``)
before asyndm's code runs, so ``asyndm -m ... dry_run=true`` cannot go through it and still write
nothing. Here the same steps are taken, each by the Hydra function that takes it in a real
multirun, with the writes left out:

- ``sweep_jobs``: the jobs and their order, as ``BasicSweeper.sweep`` expands them (a preset's
  ``hydra.sweeper.params`` first, then the command line's overrides, as one Cartesian product);
- each job's config as the launcher composes it (``load_sweep_config``), and its folder as
  ``run_job`` names it (``hydra.sweep.dir`` / ``hydra.sweep.subdir``, i.e. the override_dirname
  without conf/config.yaml's ``exclude_keys``);
- ``dry_run_sweep``: every job's plan (asyndm/dry_run.py). A job whose settings are refused gets
  one line and the others go on, as a real sweep records each job's refusal and goes on.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from . import config as config_mod
from .dry_run import dry_run
from .errors import AsyndmError, debugging
from .paths import CONF_DIR

MULTIRUN_FLAGS = ("-m", "--multirun")


def sweep_jobs(hydra_cfg: DictConfig, config_loader=None) -> list[list[str]]:
    """Every job's overrides, in launch order: what Hydra's BasicSweeper launches for this
    multirun config (its ``sweep``, batches flattened; the job numbers run on across batches)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = hydra_cfg.sweeper.get("params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + [str(o) for o in hydra_cfg.overrides.task]
    parser = OverridesParser.create(config_loader=config_loader)
    return BasicSweeper.split_arguments(parser.parse_overrides(arguments), None)[0]


def dry_run_sweep(argv: list[str]) -> int | None:
    """``asyndm -m ... dry_run=true``: print each job's plan, write nothing; the exit status (0 when
    at least one job could be planned, 2 otherwise). None when this is no dry run (or Hydra would
    refuse the command as a whole): Hydra's multirun then runs, or reports, exactly as without this."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.utils import filter_overrides
    from hydra.errors import HydraException
    from hydra.types import RunMode

    overrides = [arg for arg in argv if arg not in MULTIRUN_FLAGS]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        gh = GlobalHydra.instance()
        try:
            master = gh.hydra.compose_config("config", overrides, run_mode=RunMode.MULTIRUN, from_shell=True,
                                             with_log_configuration=False)
            if not master.get("dry_run"):
                return None
            if not str(master.hydra.sweeper.get("_target_", "")).endswith(".BasicSweeper"):
                print(f"asyndm: error: a dry run expands only Hydra's basic sweeper, not "
                      f"{master.hydra.sweeper._target_}", file=sys.stderr)
                return 2
            jobs = sweep_jobs(master.hydra, gh.config_loader())
        except HydraException:
            return None  # Hydra refuses it before writing anything, in its own words
        planned = 0
        for num, job in enumerate(jobs):
            print(f"#{num} : {' '.join(filter_overrides(job))}", flush=True)
            try:
                cfg, job_dir = _job(gh.config_loader(), master, job, num)
                config_mod.add_prompt_evaluators(cfg)
                dry_run(cfg, job_dir)
                planned += 1
            except (AsyndmError, HydraException) as err:
                if debugging():
                    raise
                reason = str(err.__cause__ or err).splitlines()[0] if isinstance(err, HydraException) else err
                print(f"asyndm: job #{num} ({' '.join(job)}) refused: {reason}", file=sys.stderr, flush=True)
    refused = f" ({len(jobs) - planned} refused)" if planned < len(jobs) else ""
    print(f"\ndry run of a sweep: {len(jobs)} jobs in {Path(str(master.hydra.sweep.dir)).absolute()}{refused}; "
          f"drop dry_run=true to run them", flush=True)
    return 0 if planned else 2


def _job(config_loader, master: DictConfig, overrides: list[str], num: int) -> tuple[DictConfig, Path]:
    """(the job's config without its hydra node, its folder): as Hydra's BasicLauncher composes the
    job and ``hydra.core.utils.run_job`` names its folder, without creating it."""
    from hydra.core.hydra_config import HydraConfig

    job_cfg = config_loader.load_sweep_config(master, list(overrides))
    with open_dict(job_cfg):
        job_cfg.hydra.job.id = num
        job_cfg.hydra.job.num = num
    HydraConfig.instance().set_config(job_cfg)  # as run_job: ${hydra:...} resolves against this job
    job_dir = os.path.join(str(OmegaConf.select(job_cfg, "hydra.sweep.dir")),
                           str(OmegaConf.select(job_cfg, "hydra.sweep.subdir")))
    with read_write(job_cfg.hydra.runtime), open_dict(job_cfg.hydra.runtime):
        job_cfg.hydra.runtime.output_dir = os.path.abspath(job_dir)
    cfg = copy.deepcopy(job_cfg)
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
    return cfg, Path(job_dir).absolute()
