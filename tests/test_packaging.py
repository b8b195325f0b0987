"""asyndm as a real package: a wheel installed into a fresh environment runs from another folder,
with its configs, prompt sets and the toy model found through the package."""

import os
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from setuptools import find_packages

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {p for p in find_packages(ROOT, include=["asyndm*", "evaluation*"])}
    assert found <= listed, f"add these to [tool.setuptools] packages: {sorted(found - listed)}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A wheel of this checkout installed into a fresh venv that reuses this environment's packages."""
    base = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(base / "dist"),
         str(ROOT)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (base / "dist").glob("asyndm-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # the dependencies: this environment's site-packages, after the fresh one (a plain path entry,
    # so this checkout's editable install is not used)
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                              str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="offline", OMP_NUM_THREADS="1")
    return venv, elsewhere, env


def test_installed_package_finds_its_data_outside_the_checkout(installed):
    venv, elsewhere, env = installed
    probe = ("import asyndm.paths as p; from asyndm.sources import built_in_source; "
             "print(p.CONF_DIR); print(built_in_source('toy'))")
    out = subprocess.run([venv / "bin" / "python", "-c", probe], cwd=elsewhere, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    conf, toy = (Path(line) for line in out.stdout.split())
    assert ROOT not in conf.parents and ROOT not in toy.parents, "found through the installed package"
    assert (conf / "config.yaml").is_file() and (conf / "prompts" / "legacy" / "animal_item.json").is_file()
    assert (toy / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_installed_console_script_runs_help_and_a_toy_run_from_another_folder(installed):
    venv, elsewhere, env = installed
    script = venv / "bin" / "asyndm"
    help_ = subprocess.run([script, "--help"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert help_.returncode == 0 and "asynchronous diffusion" in help_.stdout and "name: toy" in help_.stdout, help_.stderr[-2000:]
    run = subprocess.run([script, "prompts.limit=1", "sample.images_per_prompt=1", "sample.steps=2",
                          "variants=[dm,asyndm]", "progress=false", "run_dir=run"],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    images = sorted(p.name for p in (elsewhere / "run" / "images").iterdir())
    assert images == ["00000_asyndm.png", "00000_dm.png"]
    assert (elsewhere / "run" / "summary.csv").is_file(), "the shapes prompts bring their exact evaluator"
