import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from evaluation import registry, vlm
from evaluation.cli import CONF_DIR
from evaluation.offline.fake_run import make_fake_run
from evaluation.io import read_results
from evaluation.scoring import score_run
from evaluation.summary import summarize
from evaluation.vlm_judge import SCORE, TEMPLATE, TEMPLATE_VERSION, UNPARSEABLE, VlmJudge, parse_rating

torch.set_num_threads(1)

TINY_CFG = {"evaluator": "vlm_judge", "model": "tiny", "batch_size": 3, "device": "cpu", "max_new_tokens": 6}


pytestmark = pytest.mark.usefixtures("tiny_cache")


@pytest.fixture(scope="module")
def judge(tiny_cache):
    return registry.build("vlm_judge", TINY_CFG)


def _images(n, size=40):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.mark.parametrize("answer, expected", [
    ("7", 7), ("7.", 7), ("**7**", 7), ("7,", 7), (" 10\n", 10), ("1", 1),
    ("7/10", 7), ("7 / 10", 7), ("10/10", 10), ("7 out of 10", 7), ("8 (out of 10)", 8), ("Rating: 8/10.", 8),
    ("Score: 7", 7), ("score = 6", 6), ("Rating is 9", 9), ("Rating = 7.5", 7.5),
    ("seven", 7), ("Seven out of ten.", 7),
    ("I would rate it 7.", 7), ("On a scale of 1-10, I give 8", 8), ("1 to 10: 6", 6),
    ("There are 2 cats. Score: 6", 6), ("Score: 7\nScore: 7", 7),
])
def test_parse_rating_formats(answer, expected):
    assert parse_rating(answer) == expected


@pytest.mark.parametrize("answer", [
    "", "   ", "abc", "The image shows a cat.", "0", "11", "-3", "0/10", "12/10", "9/5",
    "7-8", "between 6 and 7", "2 cats, 6", "Score: 6, no, Score: 7", "\ufffds777777", "1234",
    "seven or eight",
])
def test_parse_rating_unparseable(answer):
    assert parse_rating(answer) is None


def test_parse_rating_other_scale():
    assert parse_rating("4/5", 1, 5) == 4
    assert parse_rating("4/10", 1, 5) is None  # not the configured scale
    assert parse_rating("0", 0, 5) == 0
    assert parse_rating("6", 0, 5) is None


def test_configs_hold_the_code_defaults():
    base = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "eval" / "vlm_judge.yaml"))
    tiny = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "eval" / "vlm_judge_tiny.yaml"))
    assert base["template"] == TEMPLATE and base["template_version"] == TEMPLATE_VERSION
    assert base["model"] == "Qwen/Qwen2.5-VL-7B-Instruct" and (base["scale_min"], base["scale_max"]) == (1, 10)
    assert tiny["model"] == "tiny"
    assert {k: v for k, v in tiny.items() if k not in ("model", "batch_size")} == \
        {k: v for k, v in base.items() if k not in ("model", "batch_size")}


def test_random_vlm_answers_are_counted_not_dropped(judge):
    images, prompts = _images(4), ["a cat", "a dog playing basketball", "a red car", "a horse"]
    answers = judge.answers(images, prompts)
    assert len(answers) == 4 and all(isinstance(a, str) for a in answers)
    scores = judge.score(images, prompts)
    assert sorted(scores) == sorted(VlmJudge.metric_names())
    for answer, value, flag in zip(answers, scores[SCORE], scores[UNPARSEABLE]):
        parsed = parse_rating(answer)
        assert flag == (1.0 if parsed is None else 0.0)
        assert (math.isnan(value) and parsed is None) or value == parsed
    assert sum(scores[UNPARSEABLE]) >= 1  # random bytes: at least one answer has no rating
    assert judge.answers(images, prompts) == answers  # greedy decoding is deterministic


def test_known_answers_give_scores_and_nan(judge, monkeypatch):
    monkeypatch.setattr(judge.vlm, "ask", lambda images, questions, *a: ["7", "no idea", "Score: 3/10"][:len(images)])
    scores = judge.score(_images(3), ["a", "b", "c"])
    assert scores[SCORE][0] == 7 and math.isnan(scores[SCORE][1]) and scores[SCORE][2] == 3
    assert scores[UNPARSEABLE] == [0.0, 1.0, 0.0]


def test_questions_hold_the_prompt(judge, monkeypatch):
    seen = []
    monkeypatch.setattr(judge.vlm, "ask", lambda images, questions, *a: seen.extend(questions) or ["5"] * len(images))
    judge.score(_images(2), ["a cat {x}", "a dog"])
    assert seen == [TEMPLATE.replace("{prompt}", "a cat {x}"), TEMPLATE.replace("{prompt}", "a dog")]


def test_score_run_keeps_nan_and_summary_counts_parsed_only(judge, tmp_path, monkeypatch):
    run = make_fake_run(tmp_path / "run", seeds=(0,))  # 2 prompts x 3 variants = 6 images
    replies = iter(["8", "junk", "6/10", "5", "", "Rating: 9"])
    monkeypatch.setattr(judge.vlm, "ask", lambda images, questions, *a: [next(replies) for _ in images])
    results = score_run(run, {"vlm_judge": TINY_CFG})
    assert set(results["metric"]) == {SCORE, UNPARSEABLE}
    assert len(results) == 12
    on_disk = read_results(run)
    score = on_disk[on_disk["metric"] == SCORE].sort_values(["image_idx", "variant"])
    assert score["value"].isna().sum() == 2  # NaN survives results.csv
    flags = on_disk[on_disk["metric"] == UNPARSEABLE]
    assert flags["value"].sum() == 2
    summary = summarize(on_disk).set_index(["metric", "category", "variant"])
    assert summary["n"].xs(SCORE, level="metric").sum() == 4  # means and n skip the NaN
    assert summary["n"].xs(UNPARSEABLE, level="metric").sum() == 6  # ...and the rate counts them

    monkeypatch.setattr(judge.vlm, "ask", lambda *a: pytest.fail("resume must not rescore"))
    assert len(score_run(run, {"vlm_judge": TINY_CFG})) == 12


def test_score_run_with_the_random_vlm(tmp_path):
    run = make_fake_run(tmp_path / "run", prompts=["a cat"], seeds=(0,), variants=("dm", "asyndm"))
    results = score_run(run, {"vlm_judge": TINY_CFG})
    flags = results[results["metric"] == UNPARSEABLE]["value"]
    scores = results[results["metric"] == SCORE]["value"]
    assert len(flags) == len(scores) == 2
    assert (flags == 1.0).sum() == scores.isna().sum()


def test_one_vlm_per_process(judge):
    other = registry.build("vlm_judge", {**TINY_CFG, "batch_size": 1})
    assert other is not judge and other.vlm is judge.vlm


def test_bad_config_fails_before_loading(tmp_path):
    with pytest.raises(ValueError, match="exactly once"):
        VlmJudge(model="tiny", template="Rate this image.", device="cpu")
    with pytest.raises(ValueError, match="scale_min"):
        VlmJudge(model="tiny", scale_min=10, scale_max=1, device="cpu")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        VlmJudge(model=str(tmp_path / "missing"), device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="without config.json"):
        VlmJudge(model=str(tmp_path / "empty"), device="cpu")


def test_missing_weights_offline_fail_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="Qwen/Qwen2.5-VL-7B-Instruct.*HF_HUB_OFFLINE.*local model folder"):
        vlm.resolve_model("Qwen/Qwen2.5-VL-7B-Instruct", "eval.vlm_judge.model")


def test_stub_tokenizer_is_refused():
    class Stub:
        def __len__(self):
            return 2

    with pytest.raises(RuntimeError, match="only 2 tokens"):
        vlm.check_vocab(Stub(), "Qwen/Qwen2.5-VL-7B-Instruct")


def _real_vlm():
    """A local folder or an already downloaded hub snapshot; never a download."""
    from huggingface_hub import try_to_load_from_cache

    path = os.environ.get("ASYNDM_VLM_MODEL", "Qwen/Qwen2.5-VL-7B-Instruct")
    if os.path.isdir(os.path.expanduser(path)):
        return os.path.expanduser(path)
    return path if isinstance(try_to_load_from_cache(path, "config.json"), str) else None


@pytest.mark.weights
@pytest.mark.skipif(_real_vlm() is None, reason="Qwen2.5-VL-7B-Instruct not in the HF cache; set ASYNDM_VLM_MODEL to a folder")
def test_real_judge_rates_a_matching_image_higher():
    red = Image.new("RGB", (448, 448), (220, 20, 20))
    judge = VlmJudge(model=_real_vlm(), batch_size=2)
    scores = judge.score([red, red], ["a plain red square", "a dog playing basketball on a beach"])
    assert scores[UNPARSEABLE] == [0.0, 0.0]
    assert scores[SCORE][0] > scores[SCORE][1]
