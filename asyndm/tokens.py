"""Item words → token positions in the prompt, with the model's own tokenizer (METHOD.md §6).

``word`` mode finds the item's tokens in the tokenised prompt (a word split into several tokens
keeps all of them; their maps are averaged). ``legacy`` mode reproduces the reference release:
whitespace-word index w is read as token w + 1, punctuation and all.
"""

from __future__ import annotations

from .errors import PromptError

TOKEN_MODES = ("word", "legacy")


def prompt_token_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids as the text encoder sees them, start and end tokens included, no padding."""
    return tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids


def _find(sequence: list[int], sub: list[int]) -> int:
    for start in range(len(sequence) - len(sub) + 1):
        if sequence[start : start + len(sub)] == sub:
            return start
    return -1


def item_token_positions(
    tokenizer, prompt: str, items: list[str], legacy_item_idx: list[int] | None = None, mode: str = "word"
) -> list[list[int]]:
    """One list of token positions per item of ``prompt``."""
    ids = prompt_token_ids(tokenizer, prompt)
    last_word_token = len(ids) - 2  # ids = [start, ..., end]
    if mode == "legacy":
        if legacy_item_idx is None:
            raise PromptError(
                f"prompt '{prompt}' has no legacy_item_idx; use prompts.item_tokens=word for this prompt file"
            )
        positions = []
        for item, word_index in zip(items, legacy_item_idx):
            if word_index + 1 > last_word_token:
                raise PromptError(
                    f"legacy index {word_index} of item '{item}' is past the {last_word_token} tokens of prompt "
                    f"'{prompt}'; fix the item file or use prompts.item_tokens=word"
                )
            positions.append([word_index + 1])
        check_length(tokenizer, prompt)
        return positions
    if mode != "word":
        raise PromptError(f"prompts.item_tokens={mode}: choose one of {', '.join(TOKEN_MODES)}")
    positions = []
    for item in items:
        word_ids = tokenizer(item, add_special_tokens=False).input_ids
        start = _find(ids[1:-1], word_ids)
        if not word_ids or start < 0:
            raise PromptError(
                f"item '{item}' is not a word of prompt '{prompt}' as the tokenizer splits it "
                f"(or lies past its {tokenizer.model_max_length}-token limit)"
            )
        positions.append(list(range(start + 1, start + 1 + len(word_ids))))
    check_length(tokenizer, prompt)
    return positions


def check_length(tokenizer, prompt: str) -> None:
    """A prompt longer than the text encoder reads would lose its last words without a word said:
    refused, naming the limit (checked where its items fit, so that an item past it is named first)."""
    length = len(tokenizer(prompt).input_ids)
    if length > tokenizer.model_max_length:
        shown = prompt if len(prompt) <= 60 else prompt[:57] + "..."
        raise PromptError(f"prompt '{shown}' is {length} tokens, more than the {tokenizer.model_max_length} "
                          f"the text encoder reads (the rest would be cut off); shorten it")
