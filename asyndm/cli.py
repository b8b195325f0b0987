"""The ``asyndm`` console script (also ``python -m asyndm``): one Hydra entry point for runs and sweeps."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .config import register_resolvers
from .paths import CONF_DIR
from .errors import AsyndmError
from .overrides import normalise_argv, unknown_group_choice, variant_option_problem

register_resolvers()
log = logging.getLogger("asyndm")


def main() -> None:
    """Console script: check group choices in one line, then hand over to Hydra."""
    sys.argv[1:] = normalise_argv(sys.argv[1:])
    problem = unknown_group_choice(sys.argv[1:]) or variant_option_problem(sys.argv[1:])
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
