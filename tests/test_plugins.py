"""A separate package extends asyndm through entry points, with no edit to asyndm (asyndm/plugins.py).

The test writes a tiny plugin package (a variant with typed options, whose rule is CFG at a fraction
of the run's scale, and an evaluator), installs it with pip into a folder of its own, and runs the
``asyndm`` CLI with that folder on the path: the variant samples beside dm, its option is typed and
changes the images, and the evaluator scores every image.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

PYPROJECT = """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "asyndm-demo-plugin"
version = "0.1"

[tool.setuptools]
packages = ["asyndm_demo_plugin"]

[project.entry-points."asyndm.variants"]
cfg_scaled = "asyndm_demo_plugin:VARIANT"

[project.entry-points."asyndm.evaluators"]
brightness = "asyndm_demo_plugin:Brightness"
"""

SPEC = '''
"""The plugin's configuration side: no torch here."""
from dataclasses import dataclass

from asyndm.variants import Variant


@dataclass(frozen=True)
class ScaledOptions:
    fraction: float = 0.5  # of the run's sample.guidance_scale


VARIANT = Variant("cfg_scaled", "sync", "classifier-free guidance at a fraction of the run's scale",
                  rule="asyndm_demo_plugin.rule:scaled_guidance", options=ScaledOptions)


class Brightness:
    """Mean pixel value in [0, 1]."""

    def __init__(self, **cfg):
        pass

    @classmethod
    def metric_names(cls, **cfg):
        return ["brightness"]

    def score(self, images, prompts):
        import numpy as np

        return {"brightness": [float(np.asarray(image, dtype=np.float64).mean() / 255) for image in images]}
'''

RULE = '''
from asyndm.guidance import ClassifierFreeGuidance


def scaled_guidance(backend, guidance_scale, options):
    return ClassifierFreeGuidance(guidance_scale * float(options.get("fraction", 0.5)))
'''


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    source = tmp_path_factory.mktemp("plugin_source")
    (source / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    package = source / "asyndm_demo_plugin"
    package.mkdir()
    (package / "__init__.py").write_text(SPEC)
    (package / "rule.py").write_text(RULE)
    site = tmp_path_factory.mktemp("plugin_site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(source)], check=True, timeout=300)
    assert list(site.glob("asyndm_demo_plugin-*.dist-info/entry_points.txt"))
    return site


def asyndm(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", "asyndm", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


RUN = ["model=tiny", "prompts=animal", "prompts.limit=1", "sample.images_per_prompt=1", "sample.batch_size=1",
       "sample.steps=3", "device=cpu", "progress=false", "save.latents=true", "variants=[dm,cfg_scaled]",
       "+eval.brightness.evaluator=brightness"]


@pytest.mark.slow
def test_a_plugin_variant_and_evaluator_run_from_the_cli(plugin_site, tmp_path):
    done = asyndm(plugin_site, tmp_path, *RUN, "variant.cfg_scaled.fraction=0.25", f"run_dir={tmp_path / 'run'}")
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    assert {p.name for p in (run / "images").iterdir()} == {"00000_dm.png", "00000_cfg_scaled.png"}
    dm, scaled = (np.load(run / "latents" / f"00000_{v}.npy") for v in ("dm", "cfg_scaled"))
    assert not np.allclose(dm, scaled)  # the plugin's rule ran, at its own scale
    results = pd.read_csv(run / "results.csv")
    assert set(results.metric) == {"brightness"} and set(results.variant) == {"dm", "cfg_scaled"}
    assert results.value.between(0, 1).all()


def test_a_plugin_variants_option_is_typed_and_checked(plugin_site, tmp_path):
    done = asyndm(plugin_site, tmp_path, "variants=[dm,cfg_scaled]", "variant.cfg_scaled.fraction=half")
    assert done.returncode == 2
    assert "variant.cfg_scaled.fraction=half" in done.stderr and "Traceback" not in done.stderr
    unknown = asyndm(plugin_site, tmp_path, "variants=[dm,cfg_scaled]", "variant.cfg_scaled.scale=2")
    assert unknown.returncode == 2 and "cfg_scaled has no option 'scale'; it takes fraction" in unknown.stderr


def test_without_the_plugin_its_variant_is_unknown(tmp_path):
    done = asyndm(tmp_path / "empty", tmp_path, "variants=[dm,cfg_scaled]")
    assert done.returncode == 2 and "unknown variant 'cfg_scaled'" in done.stderr
