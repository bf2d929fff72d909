"""`stream_text`: decoded text pieces of one LiMBeR prompt, yielded while the LM generates them.

    for piece in stream_text(limber_model, [image, "Question: what is it? Answer:"], config):
        print(piece, end="")

The prompt's images go through the encoder and projector, the segments become left-padded
embeddings (`build_prompt_embeds`, as `answer_questions` builds them), and HF `generate` runs
on `inputs_embeds` in a background thread with a `TextIteratorStreamer` that hands over the
new text after every token (HF's own waits for a space; a piece is held back only while it ends
in an incomplete multi-byte character). Like `answer_questions`, the text
is the first line, without leading whitespace: generation stops at EOS or at the first token
that holds a newline, and what follows a newline is never sent. Greedy and sampled decoding
only (HF cannot stream beam search).

This is the one place the server decodes by itself; it will give way to
`vlbridge.models.generation.stream_text` once that exists, with the same call shape.
"""

from __future__ import annotations

import logging
import threading
from typing import Iterator, Sequence

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from vlbridge.api.models import LimberModel
from vlbridge.errors import UserError
from vlbridge.models.generation import GenerationConfig
from vlbridge.models.limber import build_prompt_embeds

log = logging.getLogger(__name__)

PIECE_TIMEOUT_S = 120.0  # the longest wait for the next piece before the stream is given up


def stream_text(model: LimberModel, prompt: Sequence, config: GenerationConfig) -> Iterator[str]:
    """Text pieces of the first line generated for `prompt` (str text / image segments)."""
    config.validate()
    if config.strategy == "beam":
        raise UserError("streaming decodes greedily or by sampling; beam search cannot stream")
    limber, lm = model.model, model.model.lm
    with torch.no_grad():
        images = [segment for segment in prompt if not isinstance(segment, (str, torch.Tensor))]
        features = iter(model.image_features(images).unbind(0)) if images else iter(())
        row = [segment if isinstance(segment, (str, torch.Tensor)) else next(features) for segment in prompt]
        inputs_embeds, attention_mask = build_prompt_embeds(lm, limber.embed_segments([row]))  # (1, L, H), (1, L)
    streamer = TokenStreamer(lm.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=PIECE_TIMEOUT_S)
    failure: list[BaseException] = []
    thread = threading.Thread(
        target=_generate, args=(lm, inputs_embeds, attention_mask, config, streamer, failure), daemon=True
    )
    thread.start()
    yield from _first_line(streamer)
    thread.join(timeout=PIECE_TIMEOUT_S)
    if failure:
        raise failure[0]


class TokenStreamer(TextIteratorStreamer):
    """A TextIteratorStreamer that queues the new text after every generated token."""

    def put(self, value: torch.Tensor) -> None:
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False  # the first call carries the (empty) prompt ids
            return
        self.token_cache.extend(value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
        if text.endswith("\ufffd"):  # a character split across tokens: wait for the rest
            return
        piece, self.print_len = text[self.print_len :], len(text)
        if piece:
            self.on_finalized_text(piece)


def _generate(lm, inputs_embeds, attention_mask, config: GenerationConfig, streamer, failure: list) -> None:
    """HF generate into `streamer`; an exception is kept for the reader and the stream is closed."""
    sampling = config.strategy == "sample"
    options = {"do_sample": sampling}
    if sampling:
        options.update(temperature=config.temperature, top_p=config.top_p, top_k=0)
        torch.manual_seed(config.seed)
    try:
        with torch.no_grad():
            lm.model.generate(
                inputs_embeds=inputs_embeds, attention_mask=attention_mask, max_new_tokens=config.max_new_tokens,
                eos_token_id=lm.eos_token_id, pad_token_id=lm.pad_token_id, streamer=streamer,
                stopping_criteria=StoppingCriteriaList([_StopAtNewline(lm, config.stop_at_newline)]), **options,
            )
    except BaseException as err:  # noqa: BLE001 - handed to the reading side
        failure.append(err)
        streamer.end()


class _StopAtNewline(StoppingCriteria):
    """HF stopping criterion: the row stops once its newest token holds a newline."""

    def __init__(self, lm, enabled: bool):
        self.newline_ids = torch.tensor(sorted(lm.newline_token_ids)) if enabled else torch.tensor([], dtype=torch.long)

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.isin(input_ids[:, -1], self.newline_ids.to(input_ids.device))  # (B,) bool


def _first_line(pieces: Iterator[str]) -> Iterator[str]:
    """The pieces up to the first newline, leading whitespace dropped, empty pieces skipped."""
    started = False
    for piece in pieces:
        text, newline, _ = piece.partition("\n")
        if not started:
            text = text.lstrip()
            started = bool(text)
        if text:
            yield text
        if newline:
            for _ in pieces:  # drain: let the generating thread finish
                pass
            return
