import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from evaluation import registry
from evaluation.caption_bertscore import (CAPTION_TEMPLATE, EMPTY, F1, BertScorer, CaptionBertScore)
from evaluation.cli import CONF_DIR
from evaluation.offline.fake_run import make_fake_run
from evaluation.scoring import score_run

torch.set_num_threads(1)

TINY_CFG = {"evaluator": "caption_bertscore", "model": "tiny", "scorer_model": "tiny", "scorer_layer": 2,
            "batch_size": 3, "max_new_tokens": 8, "device": "cpu"}


pytestmark = pytest.mark.usefixtures("tiny_cache")


@pytest.fixture(scope="module")
def scorer(tiny_cache):
    return BertScorer("tiny", layer=2, device="cpu", batch_size=2)


def _hand_bertscore(scorer, candidate, reference):
    """BERTScore written out: each sentence encoded alone, explicit loops over tokens."""
    def embed(sentence):
        ids = scorer.tokenizer(sentence)["input_ids"]
        with torch.no_grad():
            out = scorer.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        emb = out.hidden_states[2][0].double()
        special = {scorer.tokenizer.cls_token_id, scorer.tokenizer.sep_token_id}
        return [e / e.norm() for e in emb], [0.0 if i in special else 1.0 for i in ids]

    cand, w_cand = embed(candidate)
    ref, w_ref = embed(reference)
    p = sum(w * max(float(c @ r) for r in ref) for c, w in zip(cand, w_cand)) / sum(w_cand)
    r = sum(w * max(float(c @ r) for c in cand) for r, w in zip(ref, w_ref)) / sum(w_ref)
    return p, r, 2 * p * r / (p + r)


def test_identical_sentences_score_one(scorer):
    p, r, f = scorer.score(["a cat eating a sandwich", "A red car."], ["a cat eating a sandwich", "A red car."])
    assert f == pytest.approx([1.0, 1.0], abs=1e-6) and p == pytest.approx([1.0, 1.0], abs=1e-6)


@pytest.mark.parametrize("candidate, reference", [
    ("a cat eating a sandwich", "a dog playing basketball"),
    ("a photo of a red car on the street", "a car"),
    ("blue horse", "a monkey with a bird in a red car"),
])
def test_matches_hand_computation(scorer, candidate, reference):
    expected = _hand_bertscore(scorer, candidate, reference)
    # batched with sentences of other lengths (padding must not change anything)
    got = scorer.score([candidate, "a", "x y z " * 5], [reference, reference, reference])
    assert [v[0] for v in got] == pytest.approx(expected, abs=1e-5)
    assert 0 < expected[2] < 1


def test_f1_is_symmetric_and_empty_scores_zero(scorer):
    _, _, f_ab = scorer.score(["a cat eating a sandwich"], ["a red car"])
    _, _, f_ba = scorer.score(["a red car"], ["a cat eating a sandwich"])
    assert f_ab == pytest.approx(f_ba, abs=1e-6)
    assert scorer.score(["", "  "], ["a cat", "a dog"]) == ([0.0, 0.0], [0.0, 0.0], [0.0, 0.0])


def test_byte_level_tokenizers_get_a_leading_space(tmp_path):
    from tokenizers import pre_tokenizers
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(ch, len(vocab))
    tokenizer = RobertaTokenizer(vocab=vocab, merges=[], model_max_length=64)
    tokenizer.save_pretrained(tmp_path)
    RobertaModel(RobertaConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=70)).save_pretrained(tmp_path)
    roberta = BertScorer(str(tmp_path), layer=1, device="cpu")
    assert roberta.prefix_space
    ids = roberta.encode("a cat")
    assert tokenizer.convert_ids_to_tokens(ids)[:2] == ["<s>", "Ġ"]  # as bert-score's add_prefix_space=True
    assert ids == tokenizer(" a cat")["input_ids"]
    assert roberta.zero_weight_ids == {0, 2}


def test_caption_template_must_not_leak_the_prompt():
    with pytest.raises(ValueError, match="must not contain"):
        CaptionBertScore(model="tiny", scorer_model="tiny", scorer_layer=2, caption_template="Caption: {prompt}")


def test_bad_layer_is_named(tiny_cache):
    with pytest.raises(ValueError, match="scorer_layer=17.*layers 1..3"):
        BertScorer("tiny", layer=17, device="cpu")


def test_configs_hold_the_code_defaults():
    base = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "eval" / "caption_bertscore.yaml"))
    assert base["caption_template"] == CAPTION_TEMPLATE
    assert (base["scorer_model"], base["scorer_layer"]) == ("roberta-large", 17)
    assert base["model"] == OmegaConf.load(CONF_DIR / "eval" / "vlm_judge.yaml")["model"]  # one shared VLM
    tiny = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "eval" / "caption_bertscore_tiny.yaml"))
    assert (tiny["model"], tiny["scorer_model"]) == ("tiny", "tiny")
    assert tiny["caption_template"] == CAPTION_TEMPLATE


def test_caption_equal_to_prompt_scores_one(tmp_path, monkeypatch):
    evaluator = registry.build("caption_bertscore", TINY_CFG)
    prompts = ["a cat eating a sandwich", "a dog playing basketball", ""]
    monkeypatch.setattr(evaluator.vlm, "ask", lambda images, questions, *a: ["a cat eating a sandwich", "a dog", ""])
    scores = evaluator.score([Image.new("RGB", (32, 32))] * 3, prompts)
    assert scores[F1][0] == pytest.approx(1.0, abs=1e-6) and 0 < scores[F1][1] < 1 and scores[F1][2] == 0.0
    assert scores[EMPTY] == [0.0, 0.0, 1.0]


def test_score_run_with_the_random_vlm_shares_it_with_the_judge(tmp_path):
    run = make_fake_run(tmp_path / "run", seeds=(0,), variants=("dm", "asyndm"))  # 4 images
    results = score_run(run, {"caption_bertscore": TINY_CFG})
    assert set(results["metric"]) == {F1, EMPTY} and len(results) == 8
    f1 = results[results["metric"] == F1]["value"]
    empty = results[results["metric"] == EMPTY]["value"]
    assert f1.notna().all() and f1.between(-1, 1).all() and set(empty) <= {0.0, 1.0}
    judge = registry.build("vlm_judge", {"model": "tiny", "device": "cpu"})
    assert judge.vlm is registry.build("caption_bertscore", TINY_CFG).vlm


def _real(model):
    """A local folder or an already downloaded hub snapshot; never a download."""
    from huggingface_hub import try_to_load_from_cache

    if os.path.isdir(os.path.expanduser(model)):
        return os.path.expanduser(model)
    return model if isinstance(try_to_load_from_cache(model, "config.json"), str) else None


ROBERTA = os.environ.get("ASYNDM_BERTSCORE_MODEL", "roberta-large")


@pytest.mark.weights
@pytest.mark.skipif(_real(ROBERTA) is None, reason="roberta-large not in the HF cache; set ASYNDM_BERTSCORE_MODEL")
def test_real_roberta_large_layer_17():
    real = BertScorer(_real(ROBERTA), layer=17)
    _, _, f1 = real.score(["a cat eating a sandwich", "a cat is eating a sandwich", "a red sports car"],
                          ["a cat eating a sandwich"] * 3)
    assert f1[0] == pytest.approx(1.0, abs=1e-5)
    assert 0.8 < f1[1] < 1.0 and f1[2] < f1[1]
