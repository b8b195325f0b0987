"""Item words → token positions with the tiny model's tokenizer (the real CLIP BPE, METHOD.md §6)."""

import pytest

from asyndm.config import CONF_DIR
from asyndm.errors import PromptError
from asyndm.prompts import PromptSpec, load_prompts
from asyndm.tokens import item_token_positions as positions_of_words
from asyndm.tokens import prompt_token_ids

SETS = ("animal", "drawbench", "geneval", "mscoco")


@pytest.fixture(scope="module")
def tokenizer(tiny_path):
    from asyndm.sources import load_tokenizer

    return load_tokenizer(str(tiny_path))


def spec(prompt, items, legacy=None):
    return PromptSpec(0, prompt, items, [0.5] * len(items), legacy)


def item_token_positions(tokenizer, s: PromptSpec, mode="word"):
    return positions_of_words(tokenizer, s.prompt, s.items, s.legacy_item_idx, mode)


def tokens_at(tokenizer, prompt, positions):
    ids = prompt_token_ids(tokenizer, prompt)
    return [tokenizer.convert_ids_to_tokens(ids[p]) for p in positions]


def test_tokenizer_is_the_real_clip_bpe(tokenizer):
    assert len(tokenizer) == 49408
    # Stable Diffusion's own ids: start 49406, "a" 320, "cat" 2368, end 49407
    assert prompt_token_ids(tokenizer, "a cat") == [49406, 320, 2368, 49407]


def test_single_token_items(tokenizer):
    positions = item_token_positions(tokenizer, spec("a cat eating a sandwich", ["cat", "sandwich"]))
    assert positions == [[2], [5]]  # 0 is the start token: a=1 cat=2 eating=3 a=4 sandwich=5


def test_case_and_punctuation_do_not_hide_an_item(tokenizer):
    positions = item_token_positions(tokenizer, spec("A Red car, and a sheep.", ["car", "sheep"]))
    assert positions == [[3], [7]]  # a red car , and a sheep .


def test_multi_token_words_return_every_position(tokenizer):
    prompt = "an axolotl riding a capybara"
    for word in ("axolotl", "capybara"):
        assert len(tokenizer(word, add_special_tokens=False).input_ids) >= 2, "the BPE must split it"
    positions = item_token_positions(tokenizer, spec(prompt, ["axolotl", "capybara"]))
    assert positions == [[2, 3, 4, 5], [8, 9, 10]]  # an=1 ax o lot l=2..5 riding=6 a=7 cap y bara=8..10
    assert tokens_at(tokenizer, prompt, positions[0]) == ["ax", "o", "lot", "l</w>"]
    assert "".join(tokens_at(tokenizer, prompt, positions[1])) == "capybara</w>"


def test_legacy_mode_is_word_index_plus_one(tokenizer):
    s = spec("a cat eating a sandwich", ["cat", "sandwich"], legacy=[1, 4])
    assert item_token_positions(tokenizer, s, "legacy") == [[2], [5]]
    assert item_token_positions(tokenizer, spec("a b c d e f", ["c"], legacy=[0]), "legacy") == [[1]]


def test_drawbench_brain_legacy_points_at_another_token_than_word_mode(tokenizer):
    prompt = "A cross-section view of a brain."
    (row,) = [s for s in load_prompts(CONF_DIR / "prompts" / "drawbench.jsonl") if s.prompt == prompt]
    assert row.items == ["brain"] and row.legacy_item_idx == [6]
    word = item_token_positions(tokenizer, row, "word")
    legacy = item_token_positions(tokenizer, row, "legacy")
    # a cross - section view of a brain . : "cross-section" is three tokens, so index 6 + 1 lands on "a"
    assert word == [[8]] and legacy == [[7]]
    assert tokens_at(tokenizer, prompt, word[0]) == ["brain</w>"]
    assert tokens_at(tokenizer, prompt, legacy[0]) == ["a</w>"]


def test_legacy_index_past_the_prompt_raises_naming_item_and_prompt(tokenizer):
    s = spec("a cat eating a sandwich", ["cat", "sandwich"], legacy=[1, 5])  # 5 words: tokens 1..5
    with pytest.raises(PromptError, match=r"legacy index 5 of item 'sandwich' .*'a cat eating a sandwich'"):
        item_token_positions(tokenizer, s, "legacy")
    assert item_token_positions(tokenizer, spec("a cat", ["cat"], legacy=[1]), "legacy") == [[2]]
    with pytest.raises(PromptError, match="'a cat'"):
        item_token_positions(tokenizer, spec("a cat", ["cat"], legacy=[2]), "legacy")


def test_legacy_mode_needs_legacy_indices_and_modes_are_checked(tokenizer):
    with pytest.raises(PromptError, match="has no legacy_item_idx"):
        item_token_positions(tokenizer, spec("a cat", ["cat"]), "legacy")
    with pytest.raises(PromptError, match="prompts.item_tokens=bpe"):
        item_token_positions(tokenizer, spec("a cat", ["cat"]), "bpe")


def test_word_not_found_by_the_tokenizer_raises_naming_item_and_prompt(tokenizer):
    with pytest.raises(PromptError, match="item 'dog' is not a word of prompt 'a cat eating a sandwich'"):
        item_token_positions(tokenizer, spec("a cat eating a sandwich", ["cat", "dog"]))


def test_word_past_the_77_token_limit_raises(tokenizer):
    prompt = " ".join(["a"] * 80) + " cat"
    with pytest.raises(PromptError, match="item 'cat'.*77-token limit"):
        item_token_positions(tokenizer, spec(prompt, ["cat"]))


@pytest.mark.parametrize("name", SETS)
def test_every_shipped_item_resolves_to_its_own_tokens(tokenizer, name):
    specs = load_prompts(CONF_DIR / "prompts" / f"{name}.jsonl")
    for s in specs:
        ids = prompt_token_ids(tokenizer, s.prompt)
        for item, positions in zip(s.items, item_token_positions(tokenizer, s, "word")):
            assert tokenizer.decode([ids[p] for p in positions]).strip() == item.lower(), (s.prompt, item)
        legacy = item_token_positions(tokenizer, s, "legacy")
        assert legacy == [[i + 1] for i in s.legacy_item_idx]
