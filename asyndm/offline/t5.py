"""An offline T5 for the tiny SD3 and Flux pipelines: a SentencePiece-style tokenizer and a small encoder.

No T5 vocabulary ships with any installed package, so the tokenizer is a Unigram model (T5's own
tokenizer type, ``▁`` word prefix, ``</s>`` appended, ``<pad>`` = 0) whose pieces are the English words
of the real CLIP BPE vocabulary (open_clip ships it), in CLIP's merge order, plus single characters so
that every string tokenises. Common words are one piece each, as with T5, so item words resolve to
token positions the way they do for the real models.
"""

from __future__ import annotations

import gzip
import math
import string
from pathlib import Path

import torch

T5_SPECIALS = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
TITLE_CASED = 5000  # the most frequent words also as "▁Word"


def t5_vocabulary() -> list[tuple[str, float]]:
    """(piece, log-probability score) pairs: specials, words by CLIP merge rank, then characters."""
    import open_clip.tokenizer as oct

    bpe = Path(oct.__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    words: list[str] = []
    for merge in merges:
        piece = "".join(merge.split())
        if piece.endswith("</w>") and piece[:-4].isascii() and piece[:-4].isalpha():
            words.append(piece[:-4])
    words = list(dict.fromkeys(words))
    pieces = {name: score for name, score in T5_SPECIALS}
    for rank, word in enumerate(words):
        pieces.setdefault("▁" + word, -math.log(rank + 2))
    for rank, word in enumerate(words[:TITLE_CASED]):
        pieces.setdefault("▁" + word.title(), -math.log(rank + 2) - 1.0)
    for char in (c for c in string.printable if not c.isspace()):
        pieces.setdefault("▁" + char, -15.0)
        pieces.setdefault(char, -16.0)
    return list(pieces.items())


def t5_tokenizer(model_max_length: int = 512):
    """The offline T5 tokenizer (``T5TokenizerFast`` in transformers 4, ``T5Tokenizer`` in 5)."""
    from transformers import T5TokenizerFast

    return T5TokenizerFast(vocab=t5_vocabulary(), extra_ids=0, model_max_length=model_max_length)


def tiny_t5_encoder(vocab_size: int, d_model: int, seed: int):
    """A small ``T5EncoderModel`` with random weights (T5 v1.1 style: gated GELU, no tied embeddings)."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(
        T5Config(
            vocab_size=vocab_size,
            d_model=d_model,
            d_kv=d_model // 4,
            d_ff=2 * d_model,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            is_encoder_decoder=False,
            use_cache=False,
            tie_word_embeddings=False,
        )
    )

