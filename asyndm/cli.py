"""The ``asyndm`` console script (also ``python -m asyndm``): one Hydra entry point for runs and sweeps."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .config import CONF_DIR, register_resolvers
from .errors import AsyndmError

register_resolvers()
log = logging.getLogger("asyndm")


# Hydra reports an unknown option of a config group (curve=foo) in many lines with status 1; these
# groups get the one-line error and status 2 that every other bad input gets.
PROJECT_GROUPS = ("model", "curve", "mask", "prompts", "logger", "experiment", "smoke", "eval", "hydra/launcher")
_CHOICES = re.compile(r"\[?\s*([\w.-]+(\s*,\s*[\w.-]+)*)?\s*\]?")  # one option, a sweep (a,b) or a list ([a,b])


def group_options(group: str) -> list[str]:
    """The options of a config group: the YAML files in its folder (Hydra's launchers for hydra/launcher)."""
    options = {path.stem for path in (CONF_DIR / group).glob("*.yaml")}
    if group == "hydra/launcher":
        options |= {"basic", "joblib", "submitit_local", "submitit_slurm"}
    return sorted(options)


def unknown_group_choice(argv: list[str]) -> str | None:
    """The error for the first override that picks a missing option of a config group."""
    if any(arg.startswith(("-cd", "--config-dir", "-cp", "--config-path", "hydra.searchpath")) for arg in argv):
        return None  # other config folders may add options
    for arg in argv:
        group, sep, value = arg.lstrip("+~").partition("=")
        if not sep or group not in PROJECT_GROUPS or not _CHOICES.fullmatch(value.strip()):
            continue
        options = group_options(group)
        for choice in filter(None, (c.strip() for c in value.strip("[] ").split(","))):
            if choice not in options and choice != "null":  # group=null deselects the group
                return f"unknown {group} '{choice}': choose {', '.join(f'{group}={o}' for o in options)}"
    return None


def normalise_argv(argv: list[str]) -> list[str]:
    """``+smoke=tiny`` (the older spelling) means ``smoke=tiny``: smoke is in the defaults list now."""
    return [arg[1:] if arg.startswith("+smoke=") else arg for arg in argv]


def main() -> None:
    """Console script: check group choices in one line, then hand over to Hydra."""
    sys.argv[1:] = normalise_argv(sys.argv[1:])
    problem = unknown_group_choice(sys.argv[1:])
    if problem:
        print(f"asyndm: error: {problem}", file=sys.stderr)
        sys.exit(2)
    hydra_main()


def _sweep_without_multirun(cfg: DictConfig) -> str | None:
    """A preset that sweeps (hydra.sweeper.params) run without -m runs only its first setting: say so."""
    hydra_cfg = HydraConfig.get()
    params = dict(hydra_cfg.sweeper.get("params") or {})
    if hydra_cfg.mode == RunMode.MULTIRUN or not params:
        return None
    sweep = " ".join(f"{k}={v}" for k, v in params.items())
    return (f"this preset sweeps {sweep}; without -m only one job ran, with the default of each. "
            f"Add -m to run the whole sweep.")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> None:
    from .run import run  # heavy imports (torch, diffusers) only once the config is composed

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    note = _sweep_without_multirun(cfg)
    if note:
        log.warning(note)
        print(f"asyndm: note: {note}", file=sys.stderr, flush=True)
    try:
        run(cfg, run_dir)
    except AsyndmError as err:
        log.error("%s", err)
        print(f"asyndm: error: {err}", file=sys.stderr)
        sys.exit(2)
    if not cfg.get("dry_run"):
        outputs = ["images/", "manifest.csv"] + (["summary.csv"] if (run_dir / "summary.csv").is_file() else [])
        print(f"asyndm: results in {run_dir} ({', '.join(outputs)}); report: asyndm-report {run_dir}", flush=True)
    log.info("run folder: %s", run_dir)


if __name__ == "__main__":
    main()
