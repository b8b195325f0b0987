"""Prompt sets with their items and k: the paper's JSONL sets, the reference's two-file format,
or a single prompt from the command line. Everything is validated before any model loads.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .errors import PromptError


@dataclass(frozen=True)
class PromptSpec:
    index: int
    prompt: str
    items: list[str]
    k: list[float]
    legacy_item_idx: list[int] | None = None
    category: str = ""
    extra: dict = field(default_factory=dict, compare=False)
    where: str = field(default="", compare=False)  # file:line (or the override) that gave it, for errors


def _word_pattern(word: str) -> re.Pattern:
    return re.compile(r"(?<![A-Za-z0-9])" + re.escape(word.lower()) + r"(?![A-Za-z0-9])")


def check_spec(spec: PromptSpec, where: str) -> None:
    """Raise PromptError naming ``where`` (file:line or override) for any unusable field."""
    if not isinstance(spec.prompt, str) or not spec.prompt.strip():
        raise PromptError(f"{where}: the prompt is empty")
    if not spec.items:
        raise PromptError(f"{where}: prompt '{spec.prompt}' has no items; list the object words to denoise slowly")
    for item in spec.items:
        if not isinstance(item, str) or not _word_pattern(item).search(spec.prompt.lower()):
            raise PromptError(f"{where}: item '{item}' is not a word of prompt '{spec.prompt}'")
    if len(spec.k) != len(spec.items):
        raise PromptError(
            f"{where}: prompt '{spec.prompt}' has {len(spec.items)} items {spec.items} but {len(spec.k)} k values "
            f"{spec.k}; give one k per item, or one k for all (k=0.5)"
        )
    _check_k(spec, where)
    if spec.legacy_item_idx is not None:
        if len(spec.legacy_item_idx) != len(spec.items) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in spec.legacy_item_idx
        ):
            raise PromptError(
                f"{where}: legacy_item_idx {spec.legacy_item_idx} must hold one non-negative integer per item"
            )


def _read_jsonl(path: Path) -> list[PromptSpec]:
    specs = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise PromptError(f"{where}: not valid JSON ({err.msg}); each line must be one JSON object") from err
        if not isinstance(row, dict) or "prompt" not in row or "items" not in row or "k" not in row:
            raise PromptError(f"{where}: each line needs the keys 'prompt', 'items' and 'k'")
        if not isinstance(row["items"], list):  # "cat" would be read letter by letter
            raise PromptError(f"{where}: \"items\" must be a list of words, e.g. [\"{row['items']}\"], "
                              f"not {json.dumps(row['items'])}")
        k = row["k"] if isinstance(row["k"], list) else [row["k"]] * len(row["items"])
        known = {"prompt", "items", "k", "legacy_item_idx", "category"}
        spec = PromptSpec(
            index=len(specs),
            prompt=row["prompt"],
            items=list(row["items"]),
            k=list(k),
            legacy_item_idx=row.get("legacy_item_idx"),
            category=str(row.get("category", "") or ""),
            extra={key: value for key, value in row.items() if key not in known},
            where=where,
        )
        check_spec(spec, where)
        specs.append(spec)
    return specs


def _legacy_word(prompt: str, word_index: int) -> str:
    words = prompt.split()
    return re.sub(r"[^\w-]", "", words[word_index]) if word_index < len(words) else f"<word {word_index}>"


def _read_legacy(path: Path, items_path: Path | None) -> list[PromptSpec]:
    """The reference release's two files: a JSON list of prompts and {item_idx: {...}, item_k: {...}}."""
    if items_path is None:
        raise PromptError(f"{path} is a legacy prompt list; also give its item file: prompts.items_file=<..._item.json>")
    try:
        prompts = json.loads(path.read_text(encoding="utf-8"))
        item_info = json.loads(Path(items_path).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise PromptError(f"prompts.items_file={items_path}: no such file") from err
    except json.JSONDecodeError as err:
        raise PromptError(f"{path} or {items_path}: not valid JSON ({err.msg})") from err
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise PromptError(f"{path}: a legacy prompt file must be a JSON list of strings")
    if not isinstance(item_info, dict) or not {"item_idx", "item_k"} <= set(item_info):
        raise PromptError(f"{items_path}: a legacy item file needs the keys 'item_idx' and 'item_k'")
    specs = []
    for prompt in prompts:
        where = f"{items_path} [{prompt!r}]"
        if prompt not in item_info["item_idx"] or prompt not in item_info["item_k"]:
            raise PromptError(f"{where}: prompt has no entry in 'item_idx' or 'item_k'")
        idx = item_info["item_idx"][prompt]
        k = item_info["item_k"][prompt]
        spec = PromptSpec(
            index=len(specs), prompt=prompt, items=[_legacy_word(prompt, i) for i in idx], k=list(k), legacy_item_idx=list(idx),
            where=where,
        )
        if len(spec.k) != len(idx):
            raise PromptError(f"{where}: {len(idx)} item indices but {len(spec.k)} k values")
        _check_k(spec, where)
        specs.append(spec)
    return specs


def _check_k(spec: PromptSpec, where: str) -> None:
    for value in spec.k:
        if isinstance(value, str):
            raise PromptError(f"{where}: k={value!r} for prompt '{spec.prompt}' is a string; write the number "
                              f"without quotes (\"k\": 0.5)")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise PromptError(
                f"{where}: k={value!r} for prompt '{spec.prompt}' is outside (0, 1]; typical k: 0.3, 0.5, 0.7"
            )


def override_k(specs: list[PromptSpec], k: float | Sequence[float]) -> list[PromptSpec]:
    """An explicit ``k`` replaces every prompt's k: one value for all items, or one per item."""
    out = []
    for spec in specs:
        values = [float(k)] * len(spec.items) if isinstance(k, (int, float)) else [float(v) for v in k]
        new = PromptSpec(spec.index, spec.prompt, spec.items, values, spec.legacy_item_idx, spec.category, spec.extra,
                         spec.where)
        if len(values) != len(spec.items):
            raise PromptError(
                f"k={list(k)}: prompt '{spec.prompt}' has {len(spec.items)} items {spec.items}; "
                f"give {len(spec.items)} values or a single k for all items (k=0.5)"
            )
        _check_k(new, f"k override for prompt '{spec.prompt}'")
        out.append(new)
    return out


def load_prompts(
    file: str | Path | None,
    items_file: str | Path | None = None,
    limit: int | None = None,
    prompt: str | None = None,
    items: Sequence[str] | None = None,
    k: float | Sequence[float] | None = None,
) -> list[PromptSpec]:
    """Prompt specs from a single ``prompt`` (with ``items`` and ``k``) or from ``file``."""
    if prompt is not None:
        if not items:
            raise PromptError(f"prompt='{prompt}' needs its object words: items=[word,...]")
        if k is None:
            raise PromptError(f"prompt='{prompt}' needs k: one per item (k=[0.5,0.5]) or one for all (k=0.5)")
        values = [float(k)] * len(items) if isinstance(k, (int, float)) else [float(v) for v in k]
        spec = PromptSpec(0, prompt, [str(i) for i in items], values, where="prompt override")
        check_spec(spec, "prompt override")
        return [spec]
    if items is not None:
        raise PromptError("items=[...] applies to a single prompt: also give prompt='...'")
    if file is None:
        raise PromptError("no prompts: choose a set (prompts=animal) or give prompts.file=<.jsonl> or prompt='...'")
    path = Path(file).expanduser()
    if not path.is_file():
        raise PromptError(f"prompts.file={file}: no such file")
    if path.suffix == ".jsonl":
        specs = _read_jsonl(path)
    elif path.suffix == ".json":
        specs = _read_legacy(path, Path(items_file).expanduser() if items_file else None)
    else:
        raise PromptError(f"prompts.file={file}: expected a .jsonl prompt set or a legacy .json prompt list")
    if not specs:
        raise PromptError(f"prompts.file={file}: the file holds no prompts")
    if limit is not None:
        if limit < 1:
            raise PromptError(f"prompts.limit={limit}: must be at least 1")
        specs = specs[:limit]
    if k is not None:
        specs = override_k(specs, k)
    return specs
