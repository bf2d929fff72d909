"""Streaming one prompt: the pieces join to exactly the non-streamed answer (greedy, sampled, beam; every
architecture; with and without the newline stop), they arrive while the LM is still decoding, closing
the stream stops the worker, worker errors reach the reader, bad input fails at once, word pieces
survive split UTF-8 characters and tokenizer space clean-up, and the Limber helper equals
answer_questions / caption_images. Spec: vlbridge.models.generation_stream."""

from __future__ import annotations

import functools
import threading

import pytest
import torch

from test_generation import STOP_BIAS, boost_stop_tokens
from helpers.tiny_lm import ARCHITECTURES, save_tiny_lm
from vlbridge.errors import UserError
from vlbridge.models.generation import GenerationConfig, answer_questions, caption_images, first_line, generate
from vlbridge.models.generation_stream import LineStreamer, stream_answer, stream_text
from vlbridge.models.limber import Limber, LimberConfig
from vlbridge.models.lm import FrozenLM

CONFIGS = [
    GenerationConfig(max_new_tokens=20),
    GenerationConfig(max_new_tokens=20, stop_at_newline=False),
    GenerationConfig(strategy="sample", max_new_tokens=20, top_p=0.95, seed=2),
    GenerationConfig(strategy="sample", max_new_tokens=20, stop_at_newline=False, seed=3),
    GenerationConfig(strategy="beam", num_beams=3, max_new_tokens=12),
]


@pytest.fixture(scope="module")
def lms(tmp_path_factory):
    """Tiny LMs of every architecture: as saved (long, rambling output) and with boosted stop tokens."""
    root = tmp_path_factory.mktemp("stream-lms")
    loaded = {}
    for arch in ARCHITECTURES:
        loaded[arch] = FrozenLM.from_pretrained(save_tiny_lm(root / arch, arch))
        loaded[f"{arch}-stops"] = FrozenLM.from_pretrained(root / arch)
        boost_stop_tokens(loaded[f"{arch}-stops"], STOP_BIAS[arch])
    return loaded


def one_prompt(lm, seed, length=5):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, length, lm.hidden_size, generator=generator), torch.ones(1, length, dtype=torch.long)


def non_streamed(lm, embeds, mask, config) -> str:
    return first_line(lm.decode(generate(lm, embeds, mask, config)[0]))


@pytest.mark.parametrize("name", [*ARCHITECTURES, *(f"{arch}-stops" for arch in ARCHITECTURES)])
def test_pieces_join_to_the_non_streamed_answer(lms, name):
    lm = lms[name]
    several_pieces = 0
    for seed in range(3):
        embeds, mask = one_prompt(lm, seed)
        for config in CONFIGS:
            pieces = list(stream_text(lm, embeds, mask, config))
            assert "".join(pieces) == non_streamed(lm, embeds, mask, config), (seed, config)
            assert all(pieces) and "\n" not in "".join(pieces)
            several_pieces += len(pieces) > 1
    assert several_pieces >= 2 or name.endswith("-stops")


def gate_forward(lm, monkeypatch, at_call: int, opened: threading.Event, calls: list):
    """Make the LM's forward call number `at_call` wait (up to 30 s) until `opened` is set; count calls."""
    forward = lm.model.forward

    @functools.wraps(forward)
    def gated(*args, **kwargs):
        calls.append(len(calls) + 1)
        if len(calls) == at_call:
            calls.append("gate opened" if opened.wait(timeout=30) else "gate timed out")
        return forward(*args, **kwargs)

    monkeypatch.setattr(lm.model, "forward", gated)


def first_piece_step(lm, embeds, mask, config) -> int:
    """The decoding step (1-based) after which LineStreamer has its first piece."""
    streamer = LineStreamer(lm)
    streamer.put(torch.zeros(1, 0, dtype=torch.long))  # the (empty) prompt
    for step, token in enumerate(generate(lm, embeds, mask, config)[0], start=1):
        streamer.put(torch.tensor([token]))
        if not streamer.pieces.empty():
            return step
    raise AssertionError("no piece before the end")


def test_pieces_arrive_while_the_lm_is_still_decoding(lms, monkeypatch):
    lm, config = lms["opt"], GenerationConfig(max_new_tokens=20)
    embeds, mask = one_prompt(lm, 2)
    step = first_piece_step(lm, embeds, mask, config)
    assert step < 15
    got_piece, calls = threading.Event(), []
    gate_forward(lm, monkeypatch, step + 1, got_piece, calls)  # the next step waits for the reader's first piece
    pieces = stream_text(lm, embeds, mask, config)
    first = next(pieces)
    got_piece.set()
    assert first + "".join(pieces) == non_streamed(lm, embeds, mask, config)
    assert "gate opened" in calls


def test_closing_the_stream_stops_the_worker(lms, monkeypatch):
    lm, config = lms["opt"], GenerationConfig(max_new_tokens=20)
    embeds, mask = one_prompt(lm, 2)
    step = first_piece_step(lm, embeds, mask, config)
    assert len(generate(lm, embeds, mask, config)[0]) == 20  # left alone, it decodes 20 tokens
    closing, calls = threading.Event(), []
    gate_forward(lm, monkeypatch, step + 1, closing, calls)
    pieces = stream_text(lm, embeds, mask, config)
    next(pieces)
    closing.set()
    pieces.close()  # sets the stop flag, then waits for the worker
    assert not [t for t in threading.enumerate() if t.name == "vlbridge-stream"]
    assert calls == [*range(1, step + 2), "gate opened"]  # the gated step was the last one


def test_worker_errors_reach_the_reader(lms, monkeypatch):
    lm = lms["gpt2"]
    embeds, mask = one_prompt(lm, 0)
    forward, calls = lm.model.forward, []

    @functools.wraps(forward)
    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory at step 3")
        return forward(*args, **kwargs)

    monkeypatch.setattr(lm.model, "forward", failing)
    with pytest.raises(RuntimeError, match="out of memory at step 3"):
        list(stream_text(lm, embeds, mask, GenerationConfig(max_new_tokens=10)))


def test_bad_input_fails_when_the_stream_is_asked_for(lms):
    lm = lms["gpt2"]
    embeds, mask = one_prompt(lm, 0)
    with pytest.raises(ValueError, match=r"one prompt: inputs_embeds must be \(1, L, H\), got \(2, 5, 32\)"):
        stream_text(lm, embeds.expand(2, -1, -1), mask.expand(2, -1))
    with pytest.raises(UserError, match="top_p"):
        stream_text(lm, embeds, mask, GenerationConfig(top_p=0.0))
    right_padded = mask.clone()
    right_padded[0, -1] = 0
    with pytest.raises(ValueError, match="LEFT-padded"):
        stream_text(lm, embeds, right_padded)


def streamed_pieces(lm, token_ids) -> list[str]:
    """Feed LineStreamer the way HF generate does: the prompt, one token per step, then end."""
    streamer = LineStreamer(lm)
    streamer.put(torch.zeros(1, 0, dtype=torch.long))
    for token in token_ids:
        streamer.put(torch.tensor([token]))
    streamer.end()
    items = list(streamer.pieces.queue)
    assert not isinstance(items[-1], str)  # the end marker
    return items[:-1]


@pytest.mark.parametrize("clean_up_spaces", [False, True])
def test_word_pieces_survive_split_characters_and_space_clean_up(lms, monkeypatch, clean_up_spaces):
    lm = lms["gpt2"]
    monkeypatch.setattr(lm.tokenizer, "clean_up_tokenization_spaces", clean_up_spaces)
    texts = [
        "  a red 🙂 circle , do n't stop . ok ' s é\nsecond line",
        "\u00e9t\u00e9 \u4e2d\u6587 🙂🙂 end",
        "word",
        "   \n",
        "a , b ' c",
    ]
    for text in texts:
        ids = lm.tokenize([text])[0]
        if "🙂" in text:  # its four bytes are split over tokens that decode to "\ufffd" alone
            assert "\ufffd" in "".join(lm.decode([i]) for i in ids)
        pieces = streamed_pieces(lm, ids)
        assert "".join(pieces) == first_line(lm.decode(ids)), text
        assert all(pieces) and not any("\ufffd" in piece for piece in pieces)


@pytest.fixture(scope="module")
def limber(lms):
    torch.manual_seed(0)
    lm = lms["gpt2"]
    config = LimberConfig(lm=str(lm.model.name_or_path), feature_dim=12, num_prefix_tokens=2)
    return Limber.build(config)


def test_stream_answer_equals_answer_questions_and_captions(limber):
    features = torch.randn(3, 12, generator=torch.Generator().manual_seed(5)) * 5
    prompts = [[features[0], "Q: what colour? A:"], ["Q: what shape? A:"], [features[1], "Q:", features[2], "A:"]]
    for config in CONFIGS:
        # (a sampled answer depends on the batch it is drawn in: each prompt is compared with itself alone)
        answers = [answer_questions(limber, [prompt], config)[0] for prompt in prompts]
        assert ["".join(stream_answer(limber, prompt, config)) for prompt in prompts] == answers
        if config.strategy != "sample":
            assert answers == answer_questions(limber, prompts, config)
        caption = caption_images(limber, {"image_features": features[:1]}, "A picture of", config)[0]
        assert "".join(stream_answer(limber, [features[0], "A picture of"], config)) == caption
