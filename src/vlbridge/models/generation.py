"""Text generation from soft prompts: greedy, beam search and nucleus sampling with a KV cache.

    config = GenerationConfig(strategy="beam", num_beams=3)
    token_lists = generate(lm, inputs_embeds, attention_mask, config)   # one list of ids per row
    captions = caption_images(limber, batch)                           # "a red circle above ..."
    answers = answer_questions(limber, prompts, config)                # first line, stripped

Prompts are batched with LEFT padding (`build_prompt_embeds` makes them); position ids are
derived from the attention mask exactly as HF `generate` does, so greedy decoding here equals
`model.generate(inputs_embeds=..., attention_mask=..., do_sample=False)` token for token, and
beam search (`vlbridge.models.beam`) equals HF beam search with the same num_beams,
length_penalty and early_stopping.

Greedy / sampled rows that have stopped leave the batch (KV-cache rows dropped), so a batch of
captions costs what its running rows cost; HF keeps computing finished rows as padding.

A row stops at EOS or, with `stop_at_newline`, at any token whose text contains a newline.
The returned ids end at that stop token: EOS is dropped, a newline-bearing token is kept (it
may carry text before the newline, e.g. ".\\n"); `first_line(lm.decode(ids))` gives the text.

Nucleus sampling keeps the SMALLEST set of most-likely tokens whose cumulative probability
reaches top_p (the published LiMBeR code kept the complement of that set by mistake).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from vlbridge.errors import UserError
from vlbridge.models.beam import beam_search
from vlbridge.models.padding import grow_mask, prompt_positions, unpadded_as_none
from vlbridge.runtime import autocast

if TYPE_CHECKING:
    from vlbridge.models.limber import Limber, Segment
    from vlbridge.models.lm import FrozenLM

log = logging.getLogger(__name__)

STRATEGIES = ("greedy", "beam", "sample")


@dataclass
class GenerationConfig:
    """How to decode; defaults follow the LiMBeR paper's captioning setup."""

    strategy: str = "greedy"  # "greedy" | "beam" | "sample"
    max_new_tokens: int = 30  # at most this many generated tokens per row
    num_beams: int = 3  # beam width (strategy "beam")
    length_penalty: float = 1.0  # beam score = sum log p / length**length_penalty (HF semantics)
    early_stopping: bool | str = False  # beam stop rule, HF semantics: True, False or "never"
    top_p: float = 0.9  # nucleus mass (strategy "sample"); 1.0 keeps every token
    temperature: float = 1.0  # logits are divided by this before sampling
    stop_at_newline: bool = True  # a token containing "\n" ends the row (EOS always does)
    seed: int = 0  # seed of the sampling generator (strategy "sample")

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise UserError(f"generation strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.strategy == "beam" and self.num_beams < 1:
            raise UserError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.early_stopping not in (True, False, "never"):
            raise UserError(f"early_stopping must be true, false or 'never', got {self.early_stopping!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.temperature <= 0.0:
            raise UserError(f"temperature must be > 0, got {self.temperature}")


def stop_token_ids(lm: "FrozenLM", stop_at_newline: bool) -> list[int]:
    """EOS first, then (optionally) every newline-bearing token id, sorted."""
    newline_ids = sorted(lm.newline_token_ids - {lm.eos_token_id}) if stop_at_newline else []
    return [lm.eos_token_id, *newline_ids]


def nucleus_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Set to -inf every logit outside the nucleus: the smallest most-likely set with mass >= top_p.

    logits (B, V) -> (B, V). A token is kept when the probability mass of the tokens ranked
    strictly above it is still below top_p; the most likely token is always kept.
    """
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V) each
    sorted_probs = sorted_logits.softmax(dim=-1)  # (B, V)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # (B, V) mass ranked above each token
    drop_sorted = mass_before >= top_p  # (B, V)
    drop_sorted[:, 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def _next_tokens(logits: torch.Tensor, config: GenerationConfig, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) float logits -> (B,) chosen token ids (argmax, or a nucleus sample)."""
    if config.strategy == "greedy":
        return logits.argmax(dim=-1)
    filtered = nucleus_filter(logits / config.temperature, config.top_p)
    probs = filtered.softmax(dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)  # (B,)


def _check_prompt(lm: "FrozenLM", inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> None:
    if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != lm.hidden_size:
        raise ValueError(f"inputs_embeds must be (B, L, {lm.hidden_size}), got {tuple(inputs_embeds.shape)}")
    if tuple(attention_mask.shape) != tuple(inputs_embeds.shape[:2]):
        raise ValueError(
            f"attention_mask must be {tuple(inputs_embeds.shape[:2])} like inputs_embeds, got {tuple(attention_mask.shape)}"
        )
    if bool((attention_mask[:, -1] == 0).any()):
        raise ValueError("prompts must be LEFT-padded: some rows end in padding (attention_mask[:, -1] == 0)")


@torch.no_grad()
def generate(
    lm: "FrozenLM", inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, config: GenerationConfig | None = None
) -> list[list[int]]:
    """Decode every row of a left-padded prompt batch; see the module docstring for the stop rule."""
    config = config or GenerationConfig()
    config.validate()
    _check_prompt(lm, inputs_embeds, attention_mask)
    stop_ids = stop_token_ids(lm, config.stop_at_newline)
    inputs_embeds = inputs_embeds.to(lm.device, lm.dtype)
    attention_mask = attention_mask.to(lm.device)
    if config.strategy == "beam":
        tokens, lengths = beam_search(lm, inputs_embeds, attention_mask, stop_ids, config)
    else:
        tokens, lengths = _decode_stepwise(lm, inputs_embeds, attention_mask, stop_ids, config)
    return [_trim(row[:length], lm.eos_token_id) for row, length in zip(tokens.tolist(), lengths.tolist())]


def _decode_stepwise(lm, inputs_embeds, attention_mask, stop_ids: list[int], config: GenerationConfig):
    """Greedy or sampled decoding with a KV cache; returns tokens (B, max_new) and lengths (B,).

    Rows that hit a stop token leave the batch (their KV-cache rows are dropped), so the LM
    only computes the rows still running; each row's tokens are what it would get alone.
    """
    batch_size = inputs_embeds.shape[0]
    device = inputs_embeds.device
    stop_tensor = torch.tensor(stop_ids, device=device)
    generator = None
    if config.strategy == "sample":
        generator = torch.Generator(device=device).manual_seed(config.seed)
    mask = attention_mask.long()
    positions = prompt_positions(mask)  # (B, L)
    mask = unpadded_as_none(mask)
    output = lm(inputs_embeds, mask, use_cache=True, position_ids=positions, logits_to_keep=1)
    next_positions = positions[:, -1:] + 1  # (A, 1) for the A running rows
    tokens = torch.full((batch_size, config.max_new_tokens), lm.pad_token_id, dtype=torch.long, device=device)
    lengths = torch.full((batch_size,), config.max_new_tokens, dtype=torch.long, device=device)
    running = torch.arange(batch_size, device=device)  # (A,) batch rows still decoding, in cache order
    for step in range(config.max_new_tokens):
        chosen = _next_tokens(output.logits[:, -1].float(), config, generator)  # (A,)
        tokens[running, step] = chosen
        stopped = torch.isin(chosen, stop_tensor)  # (A,)
        if step + 1 == config.max_new_tokens:
            break
        cache = output.cache
        if bool(stopped.any()):
            lengths[running[stopped]] = step + 1
            keep = (~stopped).nonzero().squeeze(1)  # (A',) positions of the rows that go on
            if keep.numel() == 0:
                break
            running, chosen, next_positions = running[keep], chosen[keep], next_positions[keep]
            mask = None if mask is None else mask[keep]
            cache.reorder_cache(keep)
        mask = grow_mask(mask)  # (A, L + step + 1) or None
        output = lm(
            lm.embed(chosen[:, None]),  # (A, 1, H)
            mask,
            past_key_values=cache,
            use_cache=True,
            position_ids=next_positions,
            logits_to_keep=1,
        )
        next_positions = next_positions + 1
    return tokens, lengths  # a row stopping at the last step has length max_new_tokens already


def _trim(token_ids: list[int], eos_token_id: int) -> list[int]:
    """Drop a final EOS (the stop token itself); newline-bearing stop tokens are kept."""
    return token_ids[:-1] if token_ids and token_ids[-1] == eos_token_id else token_ids


def first_line(text: str) -> str:
    """The text before the first newline, stripped."""
    return text.split("\n", 1)[0].strip()


def caption_images(
    model: "Limber", batch: dict, prompt: str = "A picture of", config: GenerationConfig | None = None
) -> list[str]:
    """One caption per image of `batch` (pixel_values or image_features): <image> prompt -> text."""
    from vlbridge.models.limber import build_prompt_embeds

    config = config or GenerationConfig()
    with torch.no_grad(), autocast(model.device):
        prefix = model.image_prefix(batch)  # (B, P, H)
        rows = [[prefix[i], prompt] if prompt else [prefix[i]] for i in range(prefix.shape[0])]
        inputs_embeds, attention_mask = build_prompt_embeds(model.lm, rows)
        token_lists = generate(model.lm, inputs_embeds, attention_mask, config)
    return [first_line(model.lm.decode(ids)) for ids in token_lists]


def answer_questions(
    model: "Limber", prompts: Sequence[Sequence["Segment"]], config: GenerationConfig | None = None
) -> list[str]:
    """Answer few-shot VQA prompts (lists of image / text segments); each answer is a first line, stripped."""
    from vlbridge.models.limber import build_prompt_embeds

    config = config or GenerationConfig()
    if not prompts:
        return []
    with torch.no_grad(), autocast(model.device):
        rows = model.embed_segments(prompts)
        inputs_embeds, attention_mask = build_prompt_embeds(model.lm, rows)
        token_lists = generate(model.lm, inputs_embeds, attention_mask, config)
    return [first_line(model.lm.decode(ids)) for ids in token_lists]
