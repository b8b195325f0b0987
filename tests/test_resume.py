"""A refusal changes nothing (asyndm/resume.py): a run that may not go into its folder is refused in
one line, naming what differs, before Hydra or the sampler writes anything there."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

RUN = ["model=tiny", "prompts.limit=1", "sample.images_per_prompt=1", "sample.batch_size=1", "device=cpu",
       "progress=false"]


def asyndm(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", "asyndm", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file's content digest and modification time (ns)."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume") / "run"
    done = asyndm(folder.parent, *RUN, "sample.steps=3", f"run_dir={folder}")
    assert done.returncode == 0, done.stderr[-2000:]
    return folder


def test_a_refused_resume_leaves_every_file_untouched_and_names_what_differs(finished_run):
    before = snapshot(finished_run)
    assert ".hydra/config.yaml" in before and "status.json" in before and "manifest.csv" in before
    done = asyndm(finished_run.parent, *RUN, "sample.steps=4", "curve=lin", f"run_dir={finished_run}")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("asyndm: error: run folder") and "sample.steps 3 → 4" in error and "curve.name 'bin' → 'lin'" in error
    assert snapshot(finished_run) == before  # bytes and modification times: nothing was rewritten


def test_the_same_command_still_resumes_the_folder(finished_run):
    done = asyndm(finished_run.parent, *RUN, "sample.steps=3", f"run_dir={finished_run}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "0 of 1 batches to sample" in done.stdout + done.stderr


def test_a_run_dir_that_is_a_file_is_refused_before_anything_is_written(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    done = asyndm(tmp_path, "sample.steps=3", f"run_dir={target}")
    assert done.returncode == 2 and f"run_dir={target} is a file" in done.stderr and "Traceback" not in done.stderr
    assert target.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A finished run that saves latents and masks too, and every file's digest."""
    folder = tmp_path_factory.mktemp("damaged") / "run"
    done = asyndm(folder.parent, *RUN, "sample.steps=3", "save.latents=true", "save.masks=true", f"run_dir={folder}")
    assert done.returncode == 0, done.stderr[-2000:]
    return folder, {k: v[0] for k, v in snapshot(folder).items()}


@pytest.mark.parametrize("damage", ["truncate", "zero", "delete"])
def test_damaged_images_latents_and_masks_are_sampled_again_byte_identical(saved_run, damage):
    folder, original = saved_run
    hurt = ["images/00000_dm.png", "latents/00000_asyndm.npy", "masks/00000_asyndm.png"]
    for name in hurt:
        path = folder / name
        if damage == "truncate":
            path.write_bytes(path.read_bytes()[:300])
        elif damage == "zero":
            path.write_bytes(b"\0" * path.stat().st_size)
        else:
            path.unlink()
    done = asyndm(folder.parent, *RUN, "sample.steps=3", "save.latents=true", "save.masks=true", f"run_dir={folder}")
    assert done.returncode == 0, done.stderr[-2000:]
    now = {k: v[0] for k, v in snapshot(folder).items()}
    for name in hurt:
        assert now[name] == original[name], f"{name} was not restored byte for byte ({damage})"
    for name in ("images/00000_asyndm.png", "images/00000_dm_concave.png", "manifest.csv"):
        assert now[name] == original[name], name  # what was intact is left as it was


def test_a_results_table_cut_mid_row_is_rescored_and_no_partial_row_becomes_a_metric(tmp_path):
    folder = tmp_path / "scored"
    args = [*RUN, "sample.steps=3", "eval=[clip_tiny]", f"run_dir={folder}"]
    assert asyndm(tmp_path, *args).returncode == 0
    results, summary = (folder / "results.csv").read_bytes(), (folder / "summary.csv").read_bytes()
    (folder / "results.csv").write_bytes(results[:-7])  # the last row cut in its value
    done = asyndm(tmp_path, *args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "last row is cut short" in done.stdout + done.stderr
    assert (folder / "results.csv").read_bytes() == results  # the lost row scored again, nothing else changed
    assert (folder / "summary.csv").read_bytes() == summary


def test_read_table_leaves_out_a_cut_last_row(tmp_path):
    from asyndm.run_folder import read_table

    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n3,")
    assert read_table(path).to_dict("list") == {"a": [1], "b": [2]}
    path.write_text("a,b\n1,2\n3,4\n")
    assert read_table(path).to_dict("list") == {"a": [1, 3], "b": [2, 4]}
