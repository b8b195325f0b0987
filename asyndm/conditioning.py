"""What a text gives the model, per sample of a batch: the prompt's and the negative prompt's conditioning.

The families' backends build it (``Backend.encode``) and the guidance rules stack and pass it on.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch


@dataclass
class TextConditioning:
    """What one text (the prompt, or the negative prompt) gives the model, per sample of a batch.

    ``tensors`` holds the family's keyword arguments for the model call, every one with the batch as
    its first dimension (SD: ``encoder_hidden_states``; SDXL adds pooled embeddings and size ids).
    """

    tensors: dict[str, torch.Tensor]  # the names the backend's predict reads; batch first

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    @staticmethod
    def cat(parts: list["TextConditioning"]) -> "TextConditioning":
        """One batch from several (guidance stacks [negative; positive]).

        Stacking the same parts (the same objects) again gives back the same batch while the first
        part lives (it keeps the batch), so a loop that stacks them every step passes one
        conditioning throughout, and a backend may keep work done per conditioning (SDXL's
        per-sample embedding tables) for as long as that batch lives. Do not change it in place.
        """
        first, rest = parts[0], parts[1:]
        kept = getattr(first, "_stacked", None)  # (weak references to the other parts, their batch)
        if kept is not None and len(kept[0]) == len(rest) and all(ref() is part for ref, part in zip(kept[0], rest)):
            return kept[1]
        batch = TextConditioning({key: torch.cat([p.tensors[key] for p in parts]) for key in first.tensors})
        first._stacked = (tuple(weakref.ref(part) for part in rest), batch)
        return batch


@dataclass
class PromptConditioning:
    """The prompt's conditioning and, under classifier-free guidance, the negative prompt's."""

    positive: TextConditioning
    negative: TextConditioning | None = None
