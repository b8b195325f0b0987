"""The ``asyndm`` console script (also ``python -m asyndm``): one Hydra entry point for runs and sweeps."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from . import config as config_mod
from .config import register_resolvers
from .dry_run import dry_run
from .resume import preflight
from .sweep_plan import MULTIRUN_FLAGS, dry_run_sweep
from .paths import CONF_DIR
from .errors import AsyndmError, debugging, take_debug_flag
from .overrides import normalise_argv, setting_problem, unknown_group_choice, variant_option_problem

register_resolvers()
log = logging.getLogger("asyndm")


def main() -> None:
    """Console script: every check that needs no model, in one line each and before anything is
    written, then hand over to Hydra (a dry run never reaches it)."""
    argv = sys.argv[1:] = normalise_argv(take_debug_flag(sys.argv[1:]))
    problem = unknown_group_choice(argv) or setting_problem(argv) or variant_option_problem(argv)
    if problem:
        print(f"asyndm: error: {problem}", file=sys.stderr)
        sys.exit(2)
    if _overrides_only(argv):  # one job: composed here, so a refusal or a dry run leaves no trace
        code = _single_job(argv)
        if code is not None:
            sys.exit(code)
    elif _dry_multirun(argv):  # Hydra's multirun would create the sweep's folders first
        code = dry_run_sweep(argv)
        if code is not None:
            sys.exit(code)
    hydra_main()


def _overrides_only(argv: list[str]) -> bool:
    """Plain overrides of one job: no Hydra flags (-m, --cfg, -cd ...)."""
    return not any(arg.startswith("-") for arg in argv)


def _dry_multirun(argv: list[str]) -> bool:
    """-m (or --multirun) with plain overrides, one of them dry_run (its value is read once composed)."""
    flags = [arg for arg in argv if arg.startswith("-")]
    return bool(flags) and set(flags) <= set(MULTIRUN_FLAGS) and any(
        arg.lstrip("+~").partition("=")[0] == "dry_run" for arg in argv)


def _single_job(argv: list[str]) -> int | None:
    """Compose the job's config here (Hydra's job runner would first create its folder and write its
    config and log there) and run the checks that need no model (asyndm/resume.py): print the plan
    of a dry run, or refuse in one line; None lets the run go on."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException

    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=argv, return_hydra_config=True)
        note = _sweep_without_multirun(cfg.hydra, multirun=False)
        with open_dict(cfg):
            del cfg["hydra"]
        config_mod.add_prompt_evaluators(cfg)
        run_dir = Path(cfg.run_dir).absolute()
        if not cfg.get("dry_run"):
            preflight(cfg, run_dir)
            return None  # the note is printed by the run itself
        if note:
            print(f"asyndm: note: {note}", file=sys.stderr, flush=True)
        dry_run(cfg, run_dir)
    except AsyndmError as err:
        if debugging():
            raise
        print(f"asyndm: error: {err}", file=sys.stderr)
        return 2
    except ConfigCompositionException as err:
        reason = str(err.__cause__ or err).splitlines()[0]
        print(f"asyndm: error: {str(err).splitlines()[0]}: {reason}", file=sys.stderr)
        return 2
    return 0


def _sweep_without_multirun(hydra_cfg, multirun: bool) -> str | None:
    """A preset that sweeps (hydra.sweeper.params) run without -m runs only its first setting: say so."""
    params = dict(hydra_cfg.sweeper.get("params") or {})
    if multirun or not params:
        return None
    sweep = " ".join(f"{k}={v}" for k, v in params.items())
    return (f"this preset sweeps {sweep}; without -m only one job ran, with the default of each. "
            f"Add -m to run the whole sweep.")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> None:
    """Every check that needs no model first, then a dry run (no torch) or the run itself."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    note = _sweep_without_multirun(HydraConfig.get(), HydraConfig.get().mode == RunMode.MULTIRUN)
    if note:
        log.warning(note)
        print(f"asyndm: note: {note}", file=sys.stderr, flush=True)
    try:
        config_mod.add_prompt_evaluators(cfg)
        if cfg.get("dry_run"):
            dry_run(cfg, run_dir)
        else:
            if HydraConfig.get().mode != RunMode.MULTIRUN:  # a sweep records each job's refusal and goes on
                config_mod.validate(cfg)
            from .run import run  # the orchestration layer: the sampler and torch load here, after the checks

            run(cfg, run_dir)
    except AsyndmError as err:
        log.error("%s", err)
        if debugging():
            raise
        print(f"asyndm: error: {err}", file=sys.stderr)
        sys.exit(2)
    if not cfg.get("dry_run"):
        outputs = ["images/", "manifest.csv"] + (["summary.csv"] if (run_dir / "summary.csv").is_file() else [])
        print(f"asyndm: results in {run_dir} ({', '.join(outputs)}); report: asyndm-report {run_dir}", flush=True)
    log.info("run folder: %s", run_dir)


if __name__ == "__main__":
    main()
