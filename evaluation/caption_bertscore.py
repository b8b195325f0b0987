"""The paper's BERTScore (METHOD.md §8): a chat VLM captions each image, and the caption is
scored against the prompt with BERTScore F1.

BERTScore F1 (Zhang et al., 2020) is computed here with transformers, following the
`bert-score` package (0.3.13) with its defaults: contextual embeddings of one hidden layer
(roberta-large, layer 17), greedy cosine matching, no idf weighting ([CLS]/[SEP]-type tokens
weigh 0 but can be matched), no baseline rescaling. The package itself is not used: under
transformers 5 it silently drops RoBERTa's leading space (`add_prefix_space` is ignored by
`encode`) and crashes on an empty caption.

The caption template must not contain the prompt, or the score measures the copy. An empty
caption scores F1 = 0 (as bert-score does) and is counted in `bertscore/empty_caption`.
"""

from __future__ import annotations

import json

import torch
from PIL import Image

from evaluation.vlm import check_vocab, load_vlm, pick_device_dtype, resolve_model

F1 = "bertscore/f1"
EMPTY = "bertscore/empty_caption"
DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
CAPTION_TEMPLATE_VERSION = "caption-v1"
CAPTION_TEMPLATE = "Describe this image in one sentence."
SCORER_MODEL = "roberta-large"
SCORER_LAYER = 17  # bert-score's model2layers["roberta-large"]


class BertScorer:
    """BERTScore of candidate sentences against reference sentences with one encoder layer."""

    def __init__(self, model: str = SCORER_MODEL, layer: int = SCORER_LAYER, device: str = "auto",
                 batch_size: int = 64, key: str = "scorer_model"):
        from transformers import AutoModel, AutoTokenizer

        from evaluation.offline.tiny_bert import tiny_bert_dir

        source = resolve_model(model, key, tiny_dir=tiny_bert_dir)
        self.device, _ = pick_device_dtype(device, "float32")
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        check_vocab(self.tokenizer, source)
        self.model = AutoModel.from_pretrained(source, dtype=torch.float32).to(self.device).eval()
        n_layers = self.model.config.num_hidden_layers
        if not 1 <= int(layer) <= n_layers:
            raise ValueError(f"scorer_layer={layer} but {source!r} has layers 1..{n_layers}")
        self.layer = int(layer)
        self.batch_size = int(batch_size)
        self.max_length = min(int(self.tokenizer.model_max_length),
                              int(getattr(self.model.config, "max_position_embeddings", 512)))
        # Byte-level BPE (RoBERTa, GPT-2, BART): bert-score encodes with add_prefix_space=True, so the
        # first word is tokenised like every other word. Prefixing a space does the same.
        pre_tokenizer = json.loads(self.tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer")
        self.prefix_space = "ByteLevel" in json.dumps(pre_tokenizer)
        # bert-score with idf off: every token weighs 1 except the [CLS] and [SEP] tokens.
        self.zero_weight_ids = {i for i in (self.tokenizer.cls_token_id, self.tokenizer.sep_token_id) if i is not None}

    def encode(self, sentence: str) -> list[int]:
        text = sentence.strip()
        if text and self.prefix_space:
            text = " " + text
        return self.tokenizer(text, add_special_tokens=True, truncation=True, max_length=self.max_length)["input_ids"]

    @torch.no_grad()
    def embed(self, sentences: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per sentence: unit-norm token embeddings (T, D) of `layer` and token weights (T,), on the CPU."""
        out = []
        for start in range(0, len(sentences), self.batch_size):
            ids = [self.encode(s) for s in sentences[start:start + self.batch_size]]
            width = max(len(i) for i in ids)
            pad = self.tokenizer.pad_token_id or 0
            input_ids = torch.tensor([i + [pad] * (width - len(i)) for i in ids], device=self.device)  # (B, T)
            mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids], device=self.device)
            hidden = self.model(input_ids=input_ids, attention_mask=mask,
                                output_hidden_states=True).hidden_states[self.layer].float().cpu()  # (B, T, D)
            for row, token_ids in zip(hidden, ids):
                emb = row[:len(token_ids)]
                weights = torch.tensor([0.0 if t in self.zero_weight_ids else 1.0 for t in token_ids])
                out.append((emb / emb.norm(dim=-1, keepdim=True), weights))
        return out

    def score(self, candidates: list[str], references: list[str]) -> tuple[list[float], list[float], list[float]]:
        """(precision, recall, F1) per pair; a pair with an empty side scores 0, as in bert-score."""
        if len(candidates) != len(references):
            raise ValueError(f"BERTScore: {len(candidates)} candidates but {len(references)} references")
        embedded = self.embed(list(candidates) + list(references))
        precision, recall, f1 = [], [], []
        for (cand, w_cand), (ref, w_ref) in zip(embedded[:len(candidates)], embedded[len(candidates):]):
            sim = cand @ ref.T  # (T_cand, T_ref) cosine similarities
            if w_cand.sum() == 0 or w_ref.sum() == 0:
                p = r = 0.0
            else:
                p = float((sim.max(dim=1).values * w_cand).sum() / w_cand.sum())
                r = float((sim.max(dim=0).values * w_ref).sum() / w_ref.sum())
            precision.append(p)
            recall.append(r)
            f1.append(2 * p * r / (p + r) if p + r != 0 else 0.0)
        return precision, recall, f1


class CaptionBertScore:
    """BERTScore F1 between each prompt and the VLM's caption of its image (the paper's BERTScore)."""

    @staticmethod
    def check_weights(model: str, scorer_model: str, **_) -> None:
        from evaluation.offline.tiny_bert import tiny_bert_dir

        resolve_model(str(model), "eval.caption_bertscore.model")
        resolve_model(str(scorer_model), "eval.caption_bertscore.scorer_model", tiny_dir=tiny_bert_dir)

    def __init__(self, model: str = DEFAULT_MODEL, caption_template_version: str = CAPTION_TEMPLATE_VERSION,
                 caption_template: str = CAPTION_TEMPLATE, max_new_tokens: int = 64, batch_size: int = 8,
                 device: str = "auto", dtype: str = "auto", scorer_model: str = SCORER_MODEL,
                 scorer_layer: int = SCORER_LAYER, scorer_batch_size: int = 64):
        if "{prompt}" in caption_template:
            raise ValueError("eval.caption_bertscore.caption_template must not contain {prompt}: a caption "
                             "written from the prompt scores the copy, not the image")
        if int(batch_size) < 1 or int(max_new_tokens) < 1:
            raise ValueError(f"eval.caption_bertscore: batch_size={batch_size} and max_new_tokens={max_new_tokens} "
                             f"must be >= 1")
        self.caption_template_version = caption_template_version
        self.caption_template = caption_template
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = int(batch_size)
        self.scorer = BertScorer(scorer_model, scorer_layer, device, scorer_batch_size,
                                 key="eval.caption_bertscore.scorer_model")
        self.vlm = load_vlm(model, device, dtype, key="eval.caption_bertscore.model")

    @classmethod
    def metric_names(cls, **cfg) -> list[str]:
        return [F1, EMPTY]

    def captions(self, images: list[Image.Image]) -> list[str]:
        return self.vlm.ask(images, [self.caption_template] * len(images), self.max_new_tokens, self.batch_size)

    def score(self, images: list[Image.Image], prompts: list[str]) -> dict[str, list[float]]:
        if len(images) != len(prompts):
            raise ValueError(f"caption_bertscore: got {len(images)} images but {len(prompts)} prompts; "
                             f"pass one prompt per image")
        captions = self.captions(images)
        _, _, f1 = self.scorer.score(captions, prompts)
        return {F1: f1, EMPTY: [0.0 if c.strip() else 1.0 for c in captions]}
