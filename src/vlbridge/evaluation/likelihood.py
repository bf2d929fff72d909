"""Caption likelihood under the frozen LM: how well a context lets the LM predict a held-out caption.

The study's primary captioning endpoint (LiMBeR's own training objective, scored on held-out
images): the frozen LM reads a context, then the reference caption and EOS, and each caption
token's negative log-likelihood (nats) is recorded. Contexts are embeddings (L, H):

    an image prefix       the projector's P vectors for the image (what the study compares)
    `start_context(lm)`   one end-of-text token: the blind floor (no image information)
    `text_context(lm, t)` another reference caption of the image as text: the ceiling

The caption is tokenized exactly as LiMBeR training does (`FrozenLM.tokenize`, no special tokens,
EOS appended), so an image prefix is scored on the sequences its projector was trained on. Each
scored token also carries the class of the word it belongs to (`classify(word)`, e.g. the objects
world's "category" / "property"), from the tokenizer's character offsets, so the same losses can
be split by word class. Sequences are right-padded in batches; padding never changes a row's
losses (tested).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vlbridge.runtime import autocast


@dataclass
class CaptionLoss:
    """Per-token losses of one caption (caption tokens, then EOS)."""

    id: str  # the image / caption id
    token_losses: np.ndarray  # (T+1,) float64 NLL in nats of each caption token and of EOS
    token_classes: list[str | None]  # word class of each scored token (None: unclassified word, EOS)

    @property
    def total(self) -> float:
        return float(self.token_losses.sum())

    def class_total(self, word_class: str) -> tuple[float, int]:
        """(summed NLL, token count) over the tokens of words of `word_class`."""
        mask = np.array([c == word_class for c in self.token_classes], dtype=bool)
        return float(self.token_losses[mask].sum()), int(mask.sum())


def start_context(lm) -> torch.Tensor:
    """(1, H) embedding of one end-of-text token: a document start carrying no image information."""
    return lm.embed(torch.tensor([lm.eos_token_id]))


def text_context(lm, text: str) -> torch.Tensor:
    """(L, H) embeddings of `text` followed by a line break (BOS first for LMs that expect one)."""
    ids = ([lm.bos_token_id] if lm.prepend_bos else []) + lm.tokenize([text.strip() + "\n"])[0]
    return lm.embed(torch.tensor(ids, dtype=torch.long))


def caption_tokens(lm, caption: str, classify: Callable[[str], str | None] | None = None) -> tuple[list[int], list[str | None]]:
    """(token ids of `caption` + EOS, word class of each token) — ids as `FrozenLM.tokenize` gives them."""
    text = caption.strip()
    encoded = lm.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    if ids != lm.tokenize([text])[0]:
        raise ValueError(f"offset tokenization disagrees with FrozenLM.tokenize for {text!r}")
    classes: list[str | None] = []
    for start, end in encoded["offset_mapping"]:
        word = _word_at(text, start, end)
        classes.append(classify(word) if classify and word else None)
    return ids + [lm.eos_token_id], classes + [None]


def _word_at(text: str, start: int, end: int) -> str:
    """The whitespace-delimited word that the character span [start, end) falls in."""
    while start < end and text[start].isspace():
        start += 1
    if start >= end:
        return ""
    left = text.rfind(" ", 0, start) + 1
    right = text.find(" ", start)
    return text[left : right if right >= 0 else len(text)]


@torch.no_grad()
def continuation_losses(lm, contexts: Sequence[torch.Tensor], targets: Sequence[Sequence[int]], batch_size: int = 32) -> list[np.ndarray]:
    """NLL (nats) of each target token given its context and the target tokens before it.

    contexts[i]: (L_i, H) embeddings; targets[i]: token ids. Returns one (len(targets[i]),) array per row.
    """
    if len(contexts) != len(targets):
        raise ValueError(f"got {len(contexts)} contexts for {len(targets)} targets")
    out: list[np.ndarray] = []
    for start in range(0, len(targets), batch_size):
        out += _batch_losses(lm, contexts[start : start + batch_size], targets[start : start + batch_size])
    return out


def _batch_losses(lm, contexts: Sequence[torch.Tensor], targets: Sequence[Sequence[int]]) -> list[np.ndarray]:
    lengths = [c.shape[0] + len(t) for c, t in zip(contexts, targets)]
    width = max(lengths)
    embeds = torch.zeros(len(targets), width, lm.hidden_size, dtype=lm.dtype, device=lm.device)  # (B, W, H)
    mask = torch.zeros(len(targets), width, dtype=torch.long, device=lm.device)  # (B, W)
    for row, (context, target) in enumerate(zip(contexts, targets)):
        ids = torch.tensor(list(target), dtype=torch.long, device=lm.device)
        sequence = torch.cat([context.to(lm.device, lm.dtype), lm.embed(ids)])  # (L + T, H)
        embeds[row, : sequence.shape[0]] = sequence
        mask[row, : sequence.shape[0]] = 1
    with autocast(lm.device):
        logits = lm(embeds, mask).logits  # (B, W, V)
    losses = []
    for row, (context, target) in enumerate(zip(contexts, targets)):
        first = context.shape[0] - 1  # position whose logits predict the first target token
        row_logits = logits[row, first : first + len(target)].float()  # (T, V)
        ids = torch.tensor(list(target), dtype=torch.long, device=row_logits.device)
        losses.append(F.cross_entropy(row_logits, ids, reduction="none").double().cpu().numpy())
    return losses


def caption_losses(
    lm,
    ids: Sequence[str],
    contexts: Sequence[torch.Tensor],
    captions: Sequence[str],
    classify: Callable[[str], str | None] | None = None,
    batch_size: int = 32,
) -> list[CaptionLoss]:
    """Per-token losses of `captions[i]` after `contexts[i]` (see the module docstring)."""
    tokenized = [caption_tokens(lm, caption, classify) for caption in captions]
    losses = continuation_losses(lm, contexts, [ids_ for ids_, _ in tokenized], batch_size)
    return [CaptionLoss(id_, loss, classes) for id_, loss, (_, classes) in zip(ids, losses, tokenized)]
