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


def planned_folders(stdout: str, cwd: Path) -> list[str]:
    """The job folders a dry run's plans name, in order, relative to ``cwd``."""
    return [str(Path(line.removeprefix("dry run: ")).relative_to(cwd))
            for line in stdout.splitlines() if line.startswith("dry run: /")]


def test_a_multirun_dry_run_plans_hydras_jobs_and_writes_nothing(tmp_path):
    """A preset's sweep (hydra.sweeper.params) times a command-line sweep: every job's plan, in the
    folders and order of Hydra's own multirun, and nothing on disk."""
    args = ["experiment=steps", "smoke=tiny", "curve=bin,lin", "dry_run=true"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    code, heavy, err = imported("asyndm", "-m", *args, cwd=tmp_path)
    assert code == 0, err
    assert heavy == ""
    assert list(tmp_path.iterdir()) == []  # no sweep folder, no multirun.yaml, no job folder, no .hydra
    ours = subprocess.run([sys.executable, "-m", "asyndm", "-m", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    # The oracle: Hydra's own multirun. -cn (a Hydra flag, naming the same config) sends the command
    # past asyndm's dry run of a sweep, so Hydra's sweeper and launcher create the job folders.
    real_cwd = tmp_path / "real"
    real_cwd.mkdir()
    real = subprocess.run([sys.executable, "-m", "asyndm", "-m", "-cn", "config", *args], cwd=real_cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert real.returncode == 0, real.stderr[-3000:]
    sweep = real_cwd / "outputs/sweeps/smoke/steps"
    created = sorted(str(p.relative_to(real_cwd)) for p in sweep.iterdir() if p.is_dir())
    assert len(created) == 6  # sample.steps 2,3,4 (the preset at smoke size) x curve bin,lin
    assert planned_folders(ours.stdout, tmp_path) == planned_folders(real.stdout, real_cwd)
    assert sorted(planned_folders(ours.stdout, tmp_path)) == created
    assert "dry run of a sweep: 6 jobs" in ours.stdout


def test_a_multirun_dry_run_reports_a_refused_job_and_goes_on(tmp_path):
    code, heavy, err = imported("asyndm", "-m", "smoke=tiny", "sample.steps=1,3", "dry_run=true", cwd=tmp_path)
    assert code == 0, err
    assert "asyndm: job #0 (smoke=tiny sample.steps=1 dry_run=True) refused: sample.steps=1: needs at least 2" in err
    assert heavy == "" and list(tmp_path.iterdir()) == []
    code, _, err = imported("asyndm", "-m", "smoke=tiny", "sample.steps=1,abc", "dry_run=true", cwd=tmp_path)
    assert code == 2 and err.count("refused: sample.steps=") == 2  # nothing could be planned
    assert list(tmp_path.iterdir()) == []
