"""A tiny, randomly initialised BERT saved as a local folder: the BERTScore scorer for tests.

A WordPiece tokenizer (letters, digits, punctuation and a few prompt words) is made with the
`tokenizers` library, so that it is built offline; it loads through `AutoTokenizer` and
`AutoModel.from_pretrained` like `roberta-large` does.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

from asyndm.paths import cache_dir
from evaluation.offline.tiny_vlm import save_folder_atomically

TINY_BERT_VERSION = "v1"
TINY_BERT_SEED = 0
TINY_BERT_LAYERS = 3
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ("a an the of on in with and is cat cats dog eating sandwich playing basketball red blue car horse "
         "monkey bird photo image").split()


def wordpiece_tokens(words=WORDS) -> list[str]:
    """A small uncased WordPiece vocabulary: special tokens, characters, continuations, whole words."""
    chars = string.ascii_lowercase + string.digits
    tokens = SPECIAL_TOKENS + list(chars + string.punctuation) + ["##" + c for c in chars] + list(words)
    return list(dict.fromkeys(tokens))


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(wordpiece_tokens())}
    tokenizer = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tokenizer.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]", model_max_length=128)


def _build(folder: Path) -> None:
    from transformers import BertConfig, BertModel

    tokenizer = build_tokenizer()
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=TINY_BERT_LAYERS,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                        pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_BERT_SEED)
        model = BertModel(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def tiny_bert_dir() -> Path:
    """Folder of the tiny BERT (model + tokenizer), building it on first use (offline, deterministic)."""
    return save_folder_atomically(cache_dir() / "models" / "tiny-bert" / TINY_BERT_VERSION, _build)
