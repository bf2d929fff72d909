"""Streaming decoding of ONE prompt: text pieces as the LM produces tokens (for chat-style servers).

    for piece in stream_answer(limber, [image, "Q: what colour is it? A:"], config):
        send(piece)                                        # "red", " circle", ...
    pieces = stream_text(lm_or_limber, inputs_embeds, attention_mask, config)   # a (1, L, H) prompt

HF `generate` runs in a worker thread and hands each new token to a `LineStreamer` (an HF
`BaseStreamer`), which turns the tokens into text pieces on a queue that the returned iterator
reads. The pieces are the answer's first line, stripped, as it grows, so

    "".join(stream_text(lm, embeds, mask, config)) == first_line(lm.decode(generate(lm, embeds, mask, config)[0]))

and `"".join(stream_answer(model, prompt, config)) == answer_questions(model, [prompt], config)[0]`
(a caption is `stream_answer(model, [image, model.config.prompt])`). A piece is sent once a
whitespace follows it: the last word may still change (a byte-level token can end inside a
UTF-8 character; a tokenizer's space clean-up turns " ." into "."), so it waits for the next
space or the end. Greedy and sampled decoding stop at the first newline even when
`stop_at_newline` is off: the text after it is never part of the answer.

Beam search picks its output only at the end (HF streams no beams), so its text is one piece.

Validation happens when `stream_text` is called, before any piece; an error in the worker is
raised by the iterator. Closing the iterator early (leaving a for loop, `close()`, a client
that went away) makes the worker stop at its next step; the iterator waits for it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import threading
from dataclasses import replace
from typing import TYPE_CHECKING, Iterator, Sequence

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from vlbridge.models.generation import GenerationConfig, check_prompt, first_line, generate, run_hf_generate
from vlbridge.models.lm import FrozenLM
from vlbridge.runtime import autocast

if TYPE_CHECKING:
    from vlbridge.models.limber import Limber, Segment

log = logging.getLogger(__name__)

_END = object()  # queue marker: the worker is done
_LAST_WHITESPACE = re.compile(r"\s(?=\S*\Z)")  # the whitespace before the last word


class LineStreamer(BaseStreamer):
    """An HF streamer that queues the first line of the decoded tokens as pieces (see the module docstring).

    `generate` calls `put` with the prompt's token ids first (none with inputs_embeds; skipped),
    then with each step's new token, and `end` when it stops. `pieces` holds the text pieces,
    then `_END`.
    """

    def __init__(self, lm: FrozenLM):
        self.lm = lm  # decodes the token ids
        self.token_ids: list[int] = []  # every token generated so far
        self.sent = ""  # text already queued: a prefix of the final answer
        self.pieces: queue.Queue = queue.Queue()  # str pieces, an exception from the worker, or _END
        self._prompt_seen = False  # the first `put` carries the prompt's ids

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.token_ids.extend(value.reshape(-1).tolist())  # (1,) per step
        self._send(self._ready_text())

    def end(self) -> None:
        self._send(first_line(self.lm.decode(self.token_ids)))
        self.pieces.put(_END)

    def _ready_text(self) -> str:
        """The part of the answer that no later token can change."""
        line, newline, _ = self.lm.decode(self.token_ids).partition("\n")
        line = line.lstrip()
        if newline:
            return line.rstrip()
        last_space = _LAST_WHITESPACE.search(line)
        return line[: last_space.start()].rstrip() if last_space else ""

    def _send(self, ready: str) -> None:
        if len(ready) > len(self.sent):
            self.pieces.put(ready[len(self.sent) :])
            self.sent = ready


class _StopWhenClosed(StoppingCriteria):
    """Stops every row once the reader of the stream has gone (`closed` set)."""

    def __init__(self):
        self.closed = threading.Event()  # set by the iterator when it is closed

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.closed.is_set(), dtype=torch.bool, device=input_ids.device)


def stream_text(
    model_or_lm: "FrozenLM | Limber",
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    config: GenerationConfig | None = None,
) -> Iterator[str]:
    """Text pieces of one prompt's answer (1, L, H) as they are decoded; see the module docstring.

    With a Limber model the decoding runs under its autocast, as `answer_questions` does.
    """
    config = config or GenerationConfig()
    config.validate()
    lm = model_or_lm if isinstance(model_or_lm, FrozenLM) else model_or_lm.lm
    check_prompt(lm, inputs_embeds, attention_mask, config.max_new_tokens)
    if inputs_embeds.shape[0] != 1:
        raise ValueError(f"stream_text decodes one prompt: inputs_embeds must be (1, L, H), got {tuple(inputs_embeds.shape)}")
    amp_device = None if isinstance(model_or_lm, FrozenLM) else model_or_lm.device
    if config.strategy == "beam":
        return _whole_answer(lm, inputs_embeds, attention_mask, config, amp_device)
    return _pieces(lm, inputs_embeds, attention_mask, replace(config, stop_at_newline=True), amp_device)


def stream_answer(model: "Limber", prompt: Sequence["Segment"], config: GenerationConfig | None = None) -> Iterator[str]:
    """Text pieces of the answer to one prompt of image / text segments (as answer_questions gives it)."""
    from vlbridge.models.limber import build_prompt_embeds

    with torch.no_grad(), autocast(model.device):
        rows = model.embed_segments([prompt])
        inputs_embeds, attention_mask = build_prompt_embeds(model.lm, rows)  # (1, L, H), (1, L)
    return stream_text(model, inputs_embeds, attention_mask, config)


def _amp(device: torch.device | None):
    return contextlib.nullcontext() if device is None else autocast(device)


def _whole_answer(lm, inputs_embeds, attention_mask, config, amp_device) -> Iterator[str]:
    """Beam search: the answer as one piece, decoded when the iterator is first read."""
    with _amp(amp_device):
        (ids,) = generate(lm, inputs_embeds, attention_mask, config)
    text = first_line(lm.decode(ids))
    if text:
        yield text


def _pieces(lm, inputs_embeds, attention_mask, config, amp_device) -> Iterator[str]:
    """Run HF generate in a worker thread and yield the streamer's pieces until it ends."""
    streamer, stop = LineStreamer(lm), _StopWhenClosed()

    def decode() -> None:
        try:
            with torch.no_grad(), _amp(amp_device):
                run_hf_generate(
                    lm, inputs_embeds, attention_mask, config,
                    streamer=streamer, stopping_criteria=StoppingCriteriaList([stop]),
                )  # fmt: skip
        except BaseException as err:  # handed to the reader, which raises it
            streamer.pieces.put(err)

    worker = threading.Thread(target=decode, name="vlbridge-stream", daemon=True)
    worker.start()
    try:
        while (item := streamer.pieces.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.closed.set()
        worker.join()
