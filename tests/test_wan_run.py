"""A Wan run end to end on the offline ``tiny_wan``: frames, videos (MP4, or GIF without an encoder), masks
as videos, the key-frame image, resume, the video CLIP scores, and the config keys that reach it."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from asyndm import outputs
from asyndm.run_folder import frame_files

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a red car driving past a dog"


def run_cli(run_dir, *extra):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="offline", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    args = ["model=tiny_wan", f"prompt={PROMPT}", "items=[car,dog]", "k=[0.7,0.5]", "variants=[dm,asyndm]",
            "save.latents=true", "save.masks=true", "sample.steps=3", "sample.images_per_prompt=2",
            "sample.batch_size=2", "device=cpu", "progress=false", "eval=[clip_video_tiny]", f"run_dir={run_dir}",
            *extra]
    return subprocess.run([sys.executable, "-m", "asyndm", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wan") / "run"
    proc = run_cli(folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder


def test_a_run_writes_frames_videos_masks_and_key_frames(run_dir):
    extension = outputs.video_format()
    for variant in ("dm", "asyndm"):
        for j in range(2):
            frames = frame_files(run_dir, f"images/{j:05}_{variant}.png")
            assert [f.name for f in frames] == [f"{i:03}.png" for i in range(5)]  # model.num_frames=5
            assert Image.open(frames[0]).size == (96, 64)  # the tiny Wan's default_size (64, 96)
            assert (run_dir / "videos" / f"{j:05}_{variant}.{extension}").stat().st_size > 0
            strip = Image.open(run_dir / "images" / f"{j:05}_{variant}.png")
            assert strip.size == (3 * 96, 64)  # first, middle, last
            middle = np.asarray(Image.open(frames[2]).convert("RGB"))
            assert np.array_equal(np.asarray(strip.convert("RGB"))[:, 96:192], middle)
            assert np.load(run_dir / "latents" / f"{j:05}_{variant}.npy").shape == (16, 2, 8, 12)
    assert sorted(p.name for p in (run_dir / "masks").iterdir()) == sorted(
        [f"{j:05}_asyndm.{e}" for j in range(2) for e in ("png", extension)])


def test_the_video_scores_are_in_the_results(run_dir):
    import pandas as pd

    results = pd.read_csv(run_dir / "results.csv")
    assert set(results.metric) == {"clip_video/frame_mean", "clip_video/frame_min", "clip_video/consecutive"}
    wide = results.pivot_table(index=["image_idx", "variant"], columns="metric", values="value")
    assert (wide["clip_video/frame_min"] <= wide["clip_video/frame_mean"] + 1e-7).all()
    assert wide["clip_video/consecutive"].between(-1, 1).all()


def test_a_rerun_resumes_and_a_lost_video_is_sampled_again_byte_for_byte(run_dir):
    before = {p: p.read_bytes() for p in sorted(run_dir.rglob("*.png")) + sorted(run_dir.rglob("*.npy"))}
    lost = run_dir / "images" / "00001_asyndm.png"
    lost.unlink()
    proc = run_cli(run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 of 1 batches to sample" in proc.stderr + proc.stdout
    after = {p: p.read_bytes() for p in before}
    assert after == before  # frames, key frames, masks and latents: the same bytes


def test_the_video_clip_scores_follow_their_definition(tiny_cache):
    from evaluation.video_clip import CONSECUTIVE, FRAME_MEAN, FRAME_MIN, VideoClipScore

    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(4)]
    scorer = VideoClipScore(arch="tiny", pretrained="tiny", device="cpu")
    scores = scorer.score([frames, frames[:1]], ["a dog", "a dog"])
    features, text = scorer.embed(frames, ["a dog"] * 4)
    per_frame = features @ text[0]
    assert scores[FRAME_MEAN][0] == pytest.approx(per_frame.mean().item(), abs=1e-6)
    assert scores[FRAME_MIN][0] == pytest.approx(per_frame.min().item(), abs=1e-6)
    pairs = [(features[i] @ features[i + 1]).item() for i in range(3)]
    assert scores[CONSECUTIVE][0] == pytest.approx(np.mean(pairs), abs=1e-6)
    assert np.isnan(scores[CONSECUTIVE][1])  # one frame: no pair


def test_videos_are_gif_without_an_encoder_and_mp4_with_one(monkeypatch):
    frames = [Image.new("RGB", (32, 16), (40 * i, 0, 0)) for i in range(3)]
    gif = Image.open(__import__("io").BytesIO(outputs.encode_video(frames, "gif")))
    assert gif.n_frames == 3
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # not installed
    assert outputs.video_format() == "gif"
    monkeypatch.undo()
    pytest.importorskip("imageio_ffmpeg")
    assert outputs.video_format() == "mp4"
    assert outputs.encode_video(frames, "mp4")[4:8] == b"ftyp"  # an MP4 container


def test_each_frame_reads_its_own_latent_frames_mask():
    # Wan's causal VAE: frame 0 alone, then 4 frames per latent frame (81 frames from 21)
    assert [outputs.latent_frame(f, 81, 21) for f in (0, 1, 4, 5, 8, 80)] == [0, 1, 1, 2, 2, 20]
    assert [outputs.latent_frame(f, 5, 2) for f in range(5)] == [0, 1, 1, 1, 1]
    frames = [Image.new("RGB", (4, 2)) for _ in range(5)]
    assignment = np.array([[0, -1], [1, 1]])  # 2 latent frames of 1×2 tokens: item 0 left, then item 1
    overlays = outputs.frame_overlays(frames, assignment, 2)
    first, last = np.asarray(overlays[0]), np.asarray(overlays[4])
    assert first[0, 0].any() and not first[0, 3].any()  # frame 0: item 0 on the left only
    assert last[0, 0].any() and last[0, 3].any()  # frame 4: item 1 everywhere


@pytest.mark.parametrize("override,message", [
    ("mask.time=both", "mask.time=both: choose frame or union"),
    ("model.num_frames=0", "model.num_frames=0: a positive number of frames"),
    ("model.default_size=[64]", "model.default_size=\\[64\\]: \\[height, width\\]"),
])
def test_bad_video_settings_are_refused_before_loading(override, message):
    from hydra import compose, initialize_config_dir

    from asyndm.config import CONF_DIR, register_resolvers, validate
    from asyndm.errors import ConfigError

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["model=tiny_wan", override])
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


@pytest.mark.parametrize("model,path,frames,size", [
    ("wan21_t2v_1_3b", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", 81, [480, 832]),
    ("wan22_ti2v_5b", "Wan-AI/Wan2.2-TI2V-5B-Diffusers", 121, [704, 1280]),
])
def test_wan_presets_compose_in_bf16_and_smoke_runs_them_on_the_tiny_wan(model, path, frames, size):
    from hydra import compose, initialize_config_dir

    from asyndm.config import CONF_DIR, register_resolvers, validate

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={model}"])
        smoke = compose(config_name="config", overrides=[f"experiment={model}", "smoke=tiny_wan"])
    assert (cfg.model.path, cfg.model.num_frames, list(cfg.model.default_size)) == (path, frames, size)
    assert (cfg.precision, cfg.prompts.name, cfg.mask.time, cfg.sample.steps) == ("bf16", "video", "frame", 50)
    validate(cfg)
    assert smoke.model.builder == "tiny_wan" and list(smoke.eval) == ["clip_video"] and smoke.precision == "fp32"
    validate(smoke)


def test_the_video_judge_rates_evenly_spaced_frames_and_keeps_unparseable_answers():
    from evaluation.video_vlm_judge import MINIMUM, SCORE, UNPARSEABLE, VideoVlmJudge, spaced_frames

    assert spaced_frames(81, 3) == [0, 40, 80] and spaced_frames(5, 3) == [0, 2, 4] and spaced_frames(2, 3) == [0, 1]
    judge = VideoVlmJudge.__new__(VideoVlmJudge)  # the rating logic alone: answers given, no model loaded
    judge.frames, judge.scale = 3, (1.0, 10.0)
    asked = []

    def answers(images, questions):
        asked.extend(images)
        return ["7", "4", "no idea", "9", "8", "10"][: len(images)]

    judge.answers = answers
    frames = [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(5)]
    scores = judge.score([frames, frames[:3]], ["a dog", "a cat"])
    assert [im.getpixel((0, 0))[0] for im in asked] == [0, 2, 4, 0, 1, 2]
    assert scores[SCORE] == [5.5, 9.0] and scores[MINIMUM] == [4.0, 8.0]
    assert scores[UNPARSEABLE] == pytest.approx([1 / 3, 0.0])


def test_the_video_judge_runs_with_the_tiny_vlm(tiny_cache):
    from evaluation import registry

    frames = [Image.new("RGB", (32, 32), (30 * i, 60, 90)) for i in range(5)]
    scores = registry.build("vlm_video", {"evaluator": "vlm_video", "model": "tiny", "frames": 2, "device": "cpu",
                                          "max_new_tokens": 2}).score([frames], ["a dog"])
    assert set(scores) == {"vlm_video/score", "vlm_video/min", "vlm_video/unparseable"}
    assert 0 <= scores["vlm_video/unparseable"][0] <= 1


def test_a_merge_of_shards_copies_each_videos_frames_and_videos(run_dir, tmp_path):
    """Two shards (the run's own folder split by hand into shard manifests) merge into a folder that
    holds every frame and video beside its image."""
    import shutil

    import pandas as pd

    from asyndm.shard import merge_shards
    from asyndm.run_folder import video_companions

    shard = tmp_path / "shard"
    shutil.copytree(run_dir, shard)
    manifest = pd.read_csv(shard / "manifest.csv")
    manifest.to_csv(shard / "manifest.shard-0-of-1.csv", index=False)
    out = tmp_path / "merged"
    merge_shards(out, [shard], evaluate=False)
    for j in range(2):
        for variant in ("dm", "asyndm"):
            companions = video_companions(run_dir, j, variant)
            assert len(companions) == 5 + 1 + (variant == "asyndm")  # frames, video, mask video
            assert all((out / name).read_bytes() == (run_dir / name).read_bytes() for name in companions)


def test_the_report_shows_each_variants_key_frames_titled_by_frame_alignment(run_dir):
    from evaluation.report import build_report, primary_metric
    import pandas as pd

    assert primary_metric(pd.read_csv(run_dir / "results.csv")) == "clip_video/frame_mean"
    page = build_report(run_dir)
    assert page.is_file() and (run_dir / "report" / "grid.png").is_file()
    text = page.read_text()  # the videos play beside each other, linked from the run folder
    extension = outputs.video_format()
    for name in (f"videos/00000_dm.{extension}", f"videos/00001_asyndm.{extension}", f"masks/00000_asyndm.{extension}"):
        assert f'src="{name}"' in text


def test_a_frame_count_the_vae_cannot_take_is_refused_before_any_weights_load(tmp_path):
    proc = run_cli(tmp_path / "run", "model.num_frames=6")
    assert proc.returncode != 0
    assert "model.num_frames=6: Wan's VAE takes 1 + 4·n frames; use 5 or 9" in proc.stderr
    assert "Loading pipeline components" not in proc.stderr
