"""Sharding and resume on the tiny model: shards merge into exactly the unsharded run's files, and
a run killed mid-way completes on rerun with no image missing, duplicated or redone."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from asyndm.config import CONF_DIR, register_resolvers
from asyndm.run import plan_batches, run, sample_run
from asyndm.plan import shard_batches
from asyndm.shard import MergeError, merge_shards
from asyndm.sweep import job_state

# 2 prompts × 3 images in batches of 2: 4 batches (2 + 1 per prompt); dm and asyndm (dm_concave adds
# nothing to what is tested here and a third of the time).
TINY = ["model=tiny", "prompts=animal", "prompts.limit=2", "sample.images_per_prompt=3", "sample.batch_size=2", "sample.steps=2",
        "variants=[dm,asyndm]", "progress=false", "eval=[]"]


def tiny_cfg(*overrides):
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[*TINY, *overrides])


def image_bytes(run_dir: Path) -> dict[str, bytes]:
    """Every visible file under images/ (hidden names are atomic-write temporaries)."""
    return {p.name: p.read_bytes() for p in sorted((run_dir / "images").glob("*")) if not p.name.startswith(".")}


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory, tiny_path):
    folder = tmp_path_factory.mktemp("unsharded")
    manifest = sample_run(tiny_cfg(), folder)
    return folder, manifest


def test_shards_split_the_global_plan():
    batches = plan_batches([object(), object(), object()], images_per_prompt=5, batch_size=2, seed=7)  # 3 × [2,2,1]
    shards = [shard_batches(batches, i, 4) for i in range(4)]
    jobs = [(job.image_idx, job.seed) for shard in shards for batch in shard for job in batch]
    assert sorted(jobs) == [(p * 5 + j, 7 + j) for p in range(3) for j in range(5)]  # each image once, global idx
    assert [len(s) for s in shards] == [3, 2, 2, 2]


@pytest.mark.slow
def test_shards_merge_into_the_unsharded_run(tmp_path, unsharded):
    reference, ref_manifest = unsharded
    shard_dirs = [tmp_path / f"shard{i}" for i in range(2)]
    for i, folder in enumerate(shard_dirs):
        run(tiny_cfg(f"shard.index={i}", "shard.count=2"), folder)
        assert (folder / f"manifest.shard-{i}-of-2.csv").is_file() and not (folder / "manifest.csv").exists()
        assert job_state(folder)[0] == "ok"
    parts = [set(image_bytes(d)) for d in shard_dirs]
    assert parts[0] and parts[1] and not parts[0] & parts[1]

    with pytest.raises(MergeError, match=r"shards \[1\] of 2 are missing"):
        merge_shards(tmp_path / "partial", shard_dirs[:1], evaluate=False)

    merged = merge_shards(tmp_path / "merged", shard_dirs, evaluate=False)
    pd.testing.assert_frame_equal(merged, ref_manifest)
    on_disk = pd.read_csv(tmp_path / "merged" / "manifest.csv", keep_default_na=False)
    pd.testing.assert_frame_equal(on_disk, pd.read_csv(reference / "manifest.csv", keep_default_na=False))
    assert image_bytes(tmp_path / "merged") == image_bytes(reference)


@pytest.mark.slow
def test_shards_sharing_one_folder_merge_in_place(tmp_path, unsharded):
    reference, ref_manifest = unsharded
    folder = tmp_path / "shared"
    for i in range(3):  # 4 batches over 3 shards: uneven on purpose
        sample_run(tiny_cfg(f"shard.index={i}", "shard.count=3"), folder)
    merged = merge_shards(folder, evaluate=False)
    pd.testing.assert_frame_equal(merged, ref_manifest)
    assert image_bytes(folder) == image_bytes(reference)


@pytest.mark.slow
def test_killed_run_resumes_without_duplicates(tmp_path, unsharded):
    reference, ref_manifest = unsharded
    folder = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "asyndm", *TINY, f"run_dir={folder}"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while proc.poll() is None and not image_bytes_names(folder) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in (folder / "images").glob("*.png")}
    assert 0 < len(done) < len(ref_manifest), f"the kill should land mid-run; {len(done)} images were written"
    assert job_state(folder)[0] == "failed"  # status.json still says running: the summary flags it

    manifest = run(tiny_cfg(), folder)
    pd.testing.assert_frame_equal(manifest, ref_manifest)
    assert image_bytes(folder) == image_bytes(reference)  # no image missing or extra, same bytes
    # Finished work is kept. Resume works per (batch, variant): only a variant whose batch was cut
    # between its two images is sampled again (same bytes), so at most one earlier file is rewritten.
    rewritten = [n for n, mtime in done.items() if (folder / "images" / n).stat().st_mtime_ns != mtime]
    assert len(rewritten) <= 1, f"images written before the kill were sampled again: {rewritten}"
    assert job_state(folder) == ("ok", "no metrics: eval is empty")


def image_bytes_names(folder: Path) -> list[str]:
    return [p.name for p in (folder / "images").glob("*.png")] if (folder / "images").is_dir() else []
