"""`asyndm-eval <run_dir> [eval=[clip] logger=wandb key=value ...]`: evaluate a run again, no resampling.

The run's own config.yaml is the base, and the overrides are parsed by Hydra's compose API with
the project's conf/ folder, exactly as `asyndm` parses them: `eval=[a,b]` selects conf/eval/ files
(replacing the run's evaluators), `eval=[]` empties the group, `logger=wandb` replaces the logger,
`key.sub=value` sets a value and `+key=value` adds one. An unknown evaluator or logger gets the
same one-line error as `asyndm`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from asyndm.config import CONF_DIR
from asyndm.errors import AsyndmError, exit_status, take_debug_flag

PRIMARY = "asyndm_eval_run"
RUN_OPTION = "_run_"  # the run's own eval/logger content, as an option of those groups
GROUPS = ("eval", "logger")


def apply_overrides(cfg: DictConfig, overrides: list[str], conf_dir: Path = CONF_DIR) -> DictConfig:
    """`cfg` (a run's config.yaml) with Hydra overrides applied by `hydra.compose`.

    The run's `eval` and `logger` nodes become the default options of their groups, so an
    override replaces them as it would replace a default in `asyndm`, and no override keeps them.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra

    from asyndm.overrides import unknown_group_choice

    problem = unknown_group_choice(list(overrides))
    if problem:
        raise ValueError(problem)
    base = OmegaConf.to_container(cfg, resolve=False)
    base.pop("hydra", None)
    store = ConfigStore.instance()
    store.store(group="eval", name=RUN_OPTION, node=base.pop("eval", None) or {}, package="eval")
    store.store(group="logger", name=RUN_OPTION, node=base.pop("logger", None) or {"name": "none"}, package="logger")
    store.store(name=PRIMARY, node={"defaults": [{"eval": [RUN_OPTION]}, {"logger": RUN_OPTION}, "_self_"], **base})
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base="1.3"):
        composed = compose(config_name=PRIMARY, overrides=list(overrides))
    OmegaConf.set_struct(composed, False)
    if "eval" not in composed:  # eval=[] leaves the group empty
        composed.eval = {}
    return composed


def main(argv: list[str] | None = None) -> int:
    argv = take_debug_flag(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(prog="asyndm-eval", description=__doc__.split("\n")[0],
                                     epilog="--debug (or ASYNDM_DEBUG=1): show the traceback of an error")
    parser.add_argument("run_dir", type=Path, help="a sampling run folder (holds config.yaml and manifest.csv)")
    parser.add_argument("overrides", nargs="*", help="e.g. eval=[clip] eval.clip.batch_size=8 logger=wandb")
    args = parser.parse_args(argv)
    from hydra.errors import HydraException
    from yaml import YAMLError

    # Bad input: a folder that is not a run, a damaged config.yaml or table, a bad override.
    return exit_status("asyndm-eval", lambda: evaluate(args.run_dir, args.overrides),
                       (AsyndmError, OSError, ValueError, KeyError, YAMLError, HydraException))


def evaluate(run_dir: Path, overrides: list[str]) -> int:
    config_path = run_dir / "config.yaml"
    if not run_dir.is_dir():
        raise AsyndmError(f"{run_dir} is not a folder; pass a run folder written by `asyndm` (it holds config.yaml)")
    if not config_path.is_file():
        raise AsyndmError(f"{config_path} not found; pass a run folder written by `asyndm`")
    saved = OmegaConf.load(config_path)
    if not isinstance(saved, DictConfig):
        raise AsyndmError(f"{config_path} is damaged (not a mapping of settings); rerun the asyndm command that "
                          f"made the run to write it again")
    cfg = apply_overrides(saved, overrides)

    from evaluation.pipeline import run_after_sampling  # scoring's libraries load after the arguments are checked

    summary = run_after_sampling(run_dir, cfg, job_type="eval")
    if summary is None:
        print(f"nothing to evaluate: {config_path} has no eval entries; add e.g. eval=[clip]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
