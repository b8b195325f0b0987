"""`asyndm-eval <run_dir> [eval=[clip] logger=wandb key=value ...]`: evaluate a run again, no resampling.

The run's own config.yaml is the base. Overrides follow Hydra's syntax for the cases that matter
here: `group=name` or `group=[a,b]` loads conf/<group>/<name>.yaml (honouring `# @package`),
`group=[]` empties a group, and `key.sub=value` (with or without a leading `+`) sets one value.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from asyndm.config import CONF_DIR



def _package(path: Path, group: str) -> str:
    """Where a group config lands: its `# @package` header, else the group name."""
    for line in path.read_text().splitlines()[:5]:
        match = re.match(r"#\s*@package\s+(\S+)", line)
        if match:
            return match.group(1)
    return group


def load_group_option(group: str, name: str, conf_dir: Path = CONF_DIR) -> tuple[str, DictConfig]:
    """(dotted package, content) of conf/<group>/<name>.yaml."""
    path = conf_dir / group / f"{name}.yaml"
    if not path.is_file():
        options = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
        raise FileNotFoundError(f"no config {path} for override {group}={name}; options: {', '.join(options)}")
    content = OmegaConf.load(path)
    content.pop("defaults", None)
    return _package(path, group), content


def apply_overrides(cfg: DictConfig, overrides: list[str], conf_dir: Path = CONF_DIR) -> DictConfig:
    """`cfg` with Hydra-style overrides applied (see module docstring)."""
    cfg = cfg.copy()
    dotlist = []
    for override in overrides:
        if "=" not in override:
            raise ValueError(f"override {override!r} is not key=value (e.g. eval=[clip] or logger=wandb)")
        key, value = override.split("=", 1)
        key = key.lstrip("+~")
        if "." not in key and (conf_dir / key).is_dir():
            names = value.strip()
            if names.startswith("[") and names.endswith("]"):
                names = [n.strip() for n in names[1:-1].split(",") if n.strip()]
                OmegaConf.update(cfg, key, {}, merge=False)
            else:
                names = [names]
            for name in names:
                package, content = load_group_option(key, name, conf_dir)
                if package == key and len(names) == 1:
                    OmegaConf.update(cfg, key, content, merge=False)  # a single-choice group is replaced
                else:
                    OmegaConf.update(cfg, package, content, merge=True)
        else:
            dotlist.append(f"{key}={value}")
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(dotlist)) if dotlist else cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="asyndm-eval", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="a sampling run folder (holds config.yaml and manifest.csv)")
    parser.add_argument("overrides", nargs="*", help="e.g. eval=[clip] eval.clip.batch_size=8 logger=wandb")
    args = parser.parse_args(argv)
    config_path = args.run_dir / "config.yaml"
    if not config_path.is_file():
        parser.error(f"{config_path} not found; pass a run folder written by `asyndm`")
    cfg = apply_overrides(OmegaConf.load(config_path), args.overrides)

    from evaluation.pipeline import run_after_sampling

    summary = run_after_sampling(args.run_dir, cfg)
    if summary is None:
        print(f"nothing to evaluate: {config_path} has no eval entries; add e.g. eval=[clip]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
