"""The ``asyndm`` console script (also ``python -m asyndm``): one Hydra entry point for runs and sweeps."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .config import CONF_DIR, register_resolvers
from .errors import AsyndmError

register_resolvers()
log = logging.getLogger("asyndm")


# Hydra reports an unknown option of a config group (curve=foo) in many lines with status 1; these
# project groups get the one-line error and status 2 that every other bad input gets.
PROJECT_GROUPS = ("model", "curve", "mask", "prompts", "logger", "eval")
# One option, a sweep list (curve=bin,lin), or a list group's options (eval=[clip,imagereward]).
_CHOICES = re.compile(r"[\w.-]+(,[\w.-]+)*|\[\s*([\w.-]+(\s*,\s*[\w.-]+)*)?\s*\]")


def unknown_group_choice(argv: list[str]) -> str | None:
    """The error for the first override that picks a missing option of a project config group."""
    if any(arg.startswith(("-cd", "--config-dir", "-cp", "--config-path", "hydra.searchpath")) for arg in argv):
        return None  # other config folders may add options
    for arg in argv:
        group, sep, value = arg.lstrip("+").partition("=")
        if not sep or group not in PROJECT_GROUPS or not _CHOICES.fullmatch(value):
            continue
        options = sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))
        for choice in (c.strip() for c in value.strip("[]").split(",")):
            if choice and choice not in options and choice != "null":  # group=null deselects the group
                return f"unknown {group} '{choice}': choose {', '.join(f'{group}={o}' for o in options)}"
    return None


def main() -> None:
    """Console script: check group choices in one line, then hand over to Hydra."""
    problem = unknown_group_choice(sys.argv[1:])
    if problem:
        print(f"asyndm: error: {problem}", file=sys.stderr)
        sys.exit(2)
    hydra_main()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> None:
    from .run import run  # heavy imports (torch, diffusers) only once the config is composed

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        run(cfg, run_dir)
    except AsyndmError as err:
        log.error("%s", err)
        print(f"asyndm: error: {err}", file=sys.stderr)
        sys.exit(2)
    log.info("run folder: %s", run_dir)


if __name__ == "__main__":
    main()
