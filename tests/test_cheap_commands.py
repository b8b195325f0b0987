"""Commands that answer at once import neither torch nor diffusers (checked with ``python -X importtime``),
and a dry run writes nothing.

``asyndm --help``, ``dry_run=true``, refusals of settings (a bad choice, number or option type) and
``asyndm-report --help`` stay in the configuration layer (tests/test_layers.py); the sampler, and
torch with it, load only when there is something to sample.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = re.compile(r"\|\s+(torch|diffusers|transformers)$", re.M)


def imported(module: str, *args: str, cwd: Path) -> tuple[int, str, str]:
    """(exit status, the heavy libraries it imported, its stderr without the import-time lines)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    heavy = sorted(set(HEAVY.findall(done.stderr)))
    rest = "\n".join(line for line in done.stderr.splitlines() if not line.startswith("import time:"))
    return done.returncode, ",".join(heavy), rest


@pytest.mark.parametrize("args,status,says", [
    (["--help"], 0, ""),
    (["curve=foo"], 2, "unknown curve 'foo'"),
    (["sample.steps=1"], 2, "sample.steps=1: needs at least 2 steps"),
    (["variant.cfgpp.scale=abc"], 2, "variant.cfgpp.scale=abc: Value 'abc'"),
    (["variant.cfgpp.sacle=0.4"], 2, "cfgpp has no option 'sacle'"),
    (["variants=[dm,nope]"], 2, "unknown variant 'nope'"),
    (["sample.steps=2.5"], 2, "sample.steps=2.5: not a valid int"),
    (["k=abc"], 2, "k=abc: 'abc' is not a number"),
    (["mask.thresold=2"], 2, "mask has no setting 'thresold'"),
    (["model.text_timestep=median"], 2, "model.text_timestep=median: choose linear, min, mean or max"),
])
def test_asyndm_answers_without_torch(tmp_path, args, status, says):
    code, heavy, err = imported("asyndm", *args, cwd=tmp_path)
    assert code == status, err
    assert says in err
    assert heavy == "", f"asyndm {' '.join(args)} imported {heavy}"


def test_a_dry_run_imports_no_torch_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "planned"
    code, heavy, err = imported("asyndm", "dry_run=true", f"run_dir={run_dir}", cwd=tmp_path)
    assert code == 0, err
    assert heavy == ""
    assert not run_dir.exists() and list(tmp_path.iterdir()) == []  # no folder, no .hydra, no log


def test_asyndm_report_help_imports_no_torch(tmp_path):
    code, heavy, err = imported("evaluation.report", "--help", cwd=tmp_path)
    assert code == 0, err
    assert heavy == ""


def test_the_check_sees_torch_when_a_command_loads_it(tmp_path):
    """The detector can fail: importing the sampler shows torch."""
    code, heavy, _ = imported("asyndm.sampler", cwd=tmp_path)
    assert code == 0 and "torch" in heavy
