"""Prompt sets, the reference's two-file format, single prompts and k overrides; each bad input gets an
error that names it (issue: "Bad input")."""

import json

import pytest

from asyndm.config import CONF_DIR
from asyndm.errors import PromptError
from asyndm.prompts import load_prompts, override_k

SETS = ("animal", "drawbench", "geneval", "mscoco")
GOOD = {"prompt": "a cat eating a sandwich", "items": ["cat", "sandwich"], "k": [0.7, 0.5]}


def write_jsonl(tmp_path, *rows, name="set.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl_rows_load_with_their_fields(tmp_path):
    path = write_jsonl(
        tmp_path,
        GOOD,
        "",
        {"prompt": "a dog on a bench", "items": ["dog", "bench"], "k": 0.3, "category": "animals", "legacy_item_idx": [1, 4]},
    )
    first, second = load_prompts(path)
    assert (first.index, first.prompt, first.items, first.k, first.legacy_item_idx) == (
        0, GOOD["prompt"], ["cat", "sandwich"], [0.7, 0.5], None,
    )
    assert (second.index, second.k, second.category, second.legacy_item_idx) == (1, [0.3, 0.3], "animals", [1, 4])


def test_item_word_not_in_prompt(tmp_path):
    path = write_jsonl(tmp_path, GOOD, {"prompt": "a cat eating a sandwich", "items": ["cat", "sandwhich"], "k": [0.5, 0.5]})
    with pytest.raises(PromptError, match=rf"{path}:2: item 'sandwhich' is not a word of prompt 'a cat eating a sandwich'"):
        load_prompts(path)
    part_of_a_word = write_jsonl(tmp_path, {"prompt": "a catapult", "items": ["cat"], "k": [0.5]}, name="sub.jsonl")
    with pytest.raises(PromptError, match="item 'cat' is not a word"):
        load_prompts(part_of_a_word)


@pytest.mark.parametrize("bad_k", [0, 0.0, -0.2, 1.01, 2, True, None])
def test_k_outside_zero_one(tmp_path, bad_k):
    path = write_jsonl(tmp_path, {"prompt": "a cat", "items": ["cat"], "k": [bad_k]})
    with pytest.raises(PromptError, match=rf"{path}:1: k={bad_k!r} .*outside \(0, 1\]"):
        load_prompts(path)


def test_k_of_one_is_allowed(tmp_path):
    assert load_prompts(write_jsonl(tmp_path, {"prompt": "a cat", "items": ["cat"], "k": [1]}))[0].k == [1]


def test_wrong_number_of_k(tmp_path):
    path = write_jsonl(tmp_path, {"prompt": "a cat eating a sandwich", "items": ["cat", "sandwich"], "k": [0.5]})
    with pytest.raises(PromptError, match=rf"{path}:1: prompt 'a cat eating a sandwich' has 2 items .* but 1 k values"):
        load_prompts(path)


@pytest.mark.parametrize("content", ["", "\n\n", "   \n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(PromptError, match=rf"prompts.file={path}: the file holds no prompts"):
        load_prompts(path)


def test_malformed_json_line(tmp_path):
    path = write_jsonl(tmp_path, GOOD, '{"prompt": "a dog", "items": ["dog"], "k": [0.5]')  # no closing brace
    with pytest.raises(PromptError, match=rf"{path}:2: not valid JSON"):
        load_prompts(path)


@pytest.mark.parametrize("row", [["a cat"], {"prompt": "a cat", "items": ["cat"]}, {"items": ["cat"], "k": 0.5}])
def test_line_without_the_needed_keys(tmp_path, row):
    path = write_jsonl(tmp_path, row)
    with pytest.raises(PromptError, match=rf"{path}:1: each line needs the keys"):
        load_prompts(path)


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(PromptError, match=r"prompts.file=.*nope.jsonl: no such file"):
        load_prompts(tmp_path / "nope.jsonl")
    path = tmp_path / "set.txt"
    path.write_text("a cat\n")
    with pytest.raises(PromptError, match=r"prompts.file=.*set.txt: expected a .jsonl"):
        load_prompts(path)


def test_legacy_json_needs_its_items_file(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(["a cat"]))
    with pytest.raises(PromptError, match=rf"{path} is a legacy prompt list; also give its item file: prompts.items_file="):
        load_prompts(path)
    with pytest.raises(PromptError, match=r"prompts.items_file=.*missing_item.json: no such file"):
        load_prompts(path, tmp_path / "missing_item.json")


def test_legacy_files_load_with_reference_semantics(tmp_path):
    prompts = tmp_path / "p.json"
    items = tmp_path / "p_item.json"
    prompts.write_text(json.dumps(["a cat eating a sandwich", "A cross-section view of a brain."]))
    items.write_text(
        json.dumps(
            {
                "item_idx": {"a cat eating a sandwich": [1, 4], "A cross-section view of a brain.": [6]},
                "item_k": {"a cat eating a sandwich": [0.7, 0.7], "A cross-section view of a brain.": [0.5]},
            }
        )
    )
    cat, brain = load_prompts(prompts, items)
    assert (cat.items, cat.k, cat.legacy_item_idx) == (["cat", "sandwich"], [0.7, 0.7], [1, 4])
    assert brain.legacy_item_idx == [6] and brain.k == [0.5]
    items.write_text(json.dumps({"item_idx": {"a cat eating a sandwich": [1, 4]}, "item_k": {"a cat eating a sandwich": [0.7]}}))
    with pytest.raises(PromptError, match="2 item indices but 1 k values"):
        load_prompts(prompts, items)
    items.write_text(json.dumps({"item_idx": {}, "item_k": {}}))
    with pytest.raises(PromptError, match=r"\['a cat eating a sandwich'\]: prompt has no entry"):
        load_prompts(prompts, items)
    items.write_text(json.dumps({"item_idx": {"a cat eating a sandwich": [1]}, "item_k": {"a cat eating a sandwich": [1.5]}}))
    with pytest.raises(PromptError, match=r"k=1.5 .*outside \(0, 1\]"):
        load_prompts(prompts, items)


def test_k_override_scalar_and_list(tmp_path):
    path = write_jsonl(tmp_path, GOOD, {"prompt": "a dog on a bench", "items": ["dog", "bench"], "k": [0.3, 0.3]})
    assert [s.k for s in load_prompts(path, k=0.4)] == [[0.4, 0.4], [0.4, 0.4]]
    assert [s.k for s in load_prompts(path, k=[0.9, 0.1])] == [[0.9, 0.1], [0.9, 0.1]]
    with pytest.raises(PromptError, match=r"k=\[0.5, 0.5, 0.5\]: prompt 'a cat eating a sandwich' has 2 items"):
        load_prompts(path, k=[0.5, 0.5, 0.5])
    with pytest.raises(PromptError, match=r"k=1.5 for prompt 'a cat eating a sandwich' is outside \(0, 1\]"):
        load_prompts(path, k=1.5)
    with pytest.raises(PromptError, match=r"k=0.0 .*outside"):
        override_k(load_prompts(path), [0.5, 0.0])


def test_single_prompt_override():
    (one,) = load_prompts(None, prompt="a cat eating a sandwich", items=["cat", "sandwich"], k=0.7)
    assert (one.prompt, one.items, one.k) == ("a cat eating a sandwich", ["cat", "sandwich"], [0.7, 0.7])
    with pytest.raises(PromptError, match="prompt override: item 'dog' is not a word of prompt 'a cat'"):
        load_prompts(None, prompt="a cat", items=["dog"], k=0.5)
    with pytest.raises(PromptError, match=r"prompt='a cat' needs its object words: items="):
        load_prompts(None, prompt="a cat", k=0.5)
    with pytest.raises(PromptError, match=r"prompt='a cat' needs k"):
        load_prompts(None, prompt="a cat", items=["cat"])
    with pytest.raises(PromptError, match=r"prompt override: prompt 'a cat' has 1 items .* but 2 k values"):
        load_prompts(None, prompt="a cat", items=["cat"], k=[0.5, 0.5])
    with pytest.raises(PromptError, match=r"items=\[...\] applies to a single prompt"):
        load_prompts(CONF_DIR / "prompts" / "animal.jsonl", items=["cat"])
    with pytest.raises(PromptError, match="no prompts"):
        load_prompts(None)


def test_limit(tmp_path):
    path = write_jsonl(tmp_path, GOOD, GOOD, GOOD)
    assert len(load_prompts(path, limit=2)) == 2
    with pytest.raises(PromptError, match="prompts.limit=0"):
        load_prompts(path, limit=0)


@pytest.mark.parametrize("name", SETS)
def test_shipped_sets_load_identically_in_both_formats(name):
    folder = CONF_DIR / "prompts"
    modern = load_prompts(folder / f"{name}.jsonl")
    legacy = load_prompts(folder / "legacy" / f"{name}.json", folder / "legacy" / f"{name}_item.json")
    assert len(modern) == len(legacy) == 40
    assert [s.prompt for s in modern] == [s.prompt for s in legacy]
    assert [s.k for s in modern] == [s.k for s in legacy]
    assert [s.legacy_item_idx for s in modern] == [s.legacy_item_idx for s in legacy]
    assert [s.index for s in modern] == list(range(40))
    assert all(len(s.items) == len(s.k) >= 1 for s in modern)


@pytest.mark.parametrize("row,says", [
    ({"prompt": "a cat on a mat", "items": "cat", "k": 0.5}, '"items" must be a list of words, e.g. ["cat"]'),
    ({"prompt": "a cat on a mat", "items": ["cat"], "k": "0.5"}, "k='0.5' for prompt 'a cat on a mat' is a string"),
])
def test_a_prompt_file_line_of_the_wrong_type_is_refused_naming_file_and_line(tmp_path, row, says):
    import json

    from asyndm.errors import PromptError
    from asyndm.prompts import load_prompts

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "a dog", "items": ["dog"], "k": 0.5}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(PromptError, match=f"{path}:2: ") as refused:
        load_prompts(str(path), None, None)
    assert says in str(refused.value)
