"""The ``asyndm`` console script (also ``python -m asyndm``): one Hydra entry point for runs and sweeps."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .config import CONF_DIR, register_resolvers
from .errors import AsyndmError

register_resolvers()
log = logging.getLogger("asyndm")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
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
