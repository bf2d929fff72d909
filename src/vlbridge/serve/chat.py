"""POST /v1/chat/completions in OpenAI's vision shape, answered by the LiMBeR model.

    {"model": "limber:...", "max_tokens": 20, "stream": false,
     "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}},
                                               {"type": "text", "text": "What colour is the circle?"}]}]}

How a conversation becomes a LiMBeR prompt:
- The last message must be a user turn with one image (an image_url part holding a data URL or
  base64; remote URLs are refused). Its text is answered as a question when it ends with "?"
  (the server's VQA wording: "Q: {question} A:" or the demo study's "Question: ... Answer:"),
  and otherwise continued as a caption (empty text: the model's own prompt, "A picture of").
- Earlier user / assistant pairs become the few-shot examples, in order: each is its image
  (if any), the user text worded as above, " ", the assistant's reply and a newline; this is
  the layout of `vlbridge.evaluation.vqa.build_prompt`, so a chat with solved VQA pairs asks
  exactly what /v1/vqa with those shots asks. System / developer messages are ignored.
- Decoding: greedy unless `temperature` > 0 (then nucleus sampling with `top_p`, default 1);
  `max_tokens` (or `max_completion_tokens`) caps the reply; `seed` seeds sampling; `n` must be
  1 and `stop` is not supported (a reply ends at the first newline). The reply is the first
  line of the generation, like every answer here.
- `stream: true` answers as server-sent events: chat.completion.chunk objects, the first with
  the assistant role, then one per decoded text piece as the LM produces it
  (`vlbridge.models.generation_stream.stream_answer`: a word once the next whitespace is
  decoded), then one with finish_reason, then `data: [DONE]`. The pieces join to the reply the
  same request gets without streaming.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any, Iterator

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from vlbridge.api import LimberModel
from vlbridge.errors import UserError, one_line
from vlbridge.evaluation.vqa import SHOT_SEPARATOR
from vlbridge.models.generation import GenerationConfig
from vlbridge.models.generation_stream import stream_answer
from vlbridge.serve.inputs import ApiError, error_body, image_from_value, read_body
from vlbridge.serve.routes import context, generate, need
from vlbridge.serve.services import ServeConfig, Services

router = APIRouter()

CAPTION_TOKENS = 30  # default max_tokens when the last turn is continued as a caption
ANSWER_TOKENS = 10  # default max_tokens when the last turn is a question
MAX_TURNS = 17  # the most user / assistant messages one request may carry (8 solved pairs + the query)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    services, config = context(request)
    fields, _ = await read_body(request)
    limber = need(services, "limber", fields)
    check_unsupported(fields)
    prompt, is_question = await run_in_threadpool(conversation_prompt, fields.get("messages"), limber, config.vqa_template)
    gen = chat_decoding(fields, config, ANSWER_TOKENS if is_question else CAPTION_TOKENS)
    model_id = services.model_ids()["limber"]
    if fields.get("stream"):
        events = stream_events(services, limber, prompt, gen, model_id)
        return StreamingResponse(events, media_type="text/event-stream", headers={"cache-control": "no-cache"})
    reply = (await generate(services, [prompt], gen))[0]
    used = completion_tokens(limber, reply)
    return {
        "id": _completion_id(), "object": "chat.completion", "created": int(time.time()), "model": model_id,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                     "finish_reason": "length" if used >= gen.max_new_tokens else "stop", "logprobs": None}],
        "usage": {"prompt_tokens": prompt_tokens(limber, prompt), "completion_tokens": used,
                  "total_tokens": prompt_tokens(limber, prompt) + used},
    }


def conversation_prompt(messages: Any, limber: LimberModel, template: str) -> tuple[list, bool]:
    """(prompt segments, whether the last turn is a question) of an OpenAI message list."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {role, content}", "messages")
    turns = [m for m in messages if not (isinstance(m, dict) and m.get("role") in ("system", "developer"))]
    if len(turns) > MAX_TURNS:
        raise ApiError(400, f"at most {MAX_TURNS} user / assistant messages per request, got {len(turns)}", "messages")
    for number, turn in enumerate(turns):
        expected = "user" if (len(turns) - 1 - number) % 2 == 0 else "assistant"
        if not isinstance(turn, dict) or turn.get("role") != expected:
            raise ApiError(400, f"messages[{number}]: expected a {expected} turn (turns alternate and end with a user turn)",
                           "messages")
    segments: list = []
    for number in range(0, len(turns) - 1, 2):
        image, text = user_turn(turns[number], number)
        segments += ([image] if image is not None else []) + [turn_text(text, limber, template) + " "
                                                              + assistant_text(turns[number + 1], number + 1) + SHOT_SEPARATOR]
    image, text = user_turn(turns[-1], len(turns) - 1)
    if image is None:
        raise ApiError(400, "the last user message needs an image (an image_url part with a data URL)", "messages")
    query = turn_text(text, limber, template)
    return segments + [image] + ([query] if query else []), _is_question(text)


def user_turn(message: dict, number: int):
    """(PIL image or None, text) of a user message; content is a string or a list of text / image_url parts."""
    content = message.get("content")
    if isinstance(content, str):
        return None, content.strip()
    if not isinstance(content, list):
        raise ApiError(400, f"messages[{number}].content must be text or a list of parts", "messages")
    images, texts = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in ("image_url", "image"):
            images.append(image_from_value(part.get("image_url", part.get("image")), f"messages[{number}].image_url"))
        else:
            raise ApiError(400, f"messages[{number}]: content parts must be {{type: text}} or {{type: image_url}}, got {kind!r}",
                           "messages")
    if len(images) > 1:
        raise ApiError(400, f"messages[{number}]: one image per user message, got {len(images)}", "messages")
    return (images[0] if images else None), " ".join(t.strip() for t in texts if t.strip())


def assistant_text(message: dict, number: int) -> str:
    content = message.get("content")
    if isinstance(content, list):
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    if not isinstance(content, str) or not content.strip():
        raise ApiError(400, f"messages[{number}]: an assistant turn needs text content", "messages")
    return content.strip().split("\n", 1)[0]


def _is_question(text: str) -> bool:
    return text.rstrip().endswith("?")


def turn_text(text: str, limber: LimberModel, template: str) -> str:
    """A user turn's words in the prompt: a question in the VQA wording, else the caption text to continue."""
    if _is_question(text):
        return template.format(question=text.strip())
    return text or limber.prompt


def check_unsupported(fields: dict) -> None:
    """400 for options this server cannot honour: several replies, stop sequences."""
    if fields.get("n") not in (None, 1):
        raise ApiError(400, f"n must be 1 (one reply per request), got {fields.get('n')!r}", "n")
    if fields.get("stop") not in (None, [], ""):
        raise ApiError(400, "stop sequences are not supported: a reply ends at the first newline", "stop")


def chat_decoding(fields: dict, config: ServeConfig, default_max: int) -> GenerationConfig:
    """GenerationConfig from max_tokens / temperature / top_p / seed (see the module docstring)."""
    limit = fields.get("max_completion_tokens", fields.get("max_tokens"))
    limit = default_max if limit is None else limit
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= config.max_new_tokens:
        raise ApiError(400, f"max_tokens must be a whole number from 1 to {config.max_new_tokens}, got {limit!r}", "max_tokens")
    options: dict = {"max_new_tokens": limit}
    temperature, top_p, seed = fields.get("temperature"), fields.get("top_p"), fields.get("seed")
    for name, value in (("temperature", temperature), ("top_p", top_p), ("seed", seed)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ApiError(400, f"{name} must be a number, got {value!r}", name)
    if temperature:
        options.update(strategy="sample", temperature=float(temperature), top_p=float(top_p if top_p is not None else 1.0))
    if seed is not None:
        options["seed"] = int(seed)
    config_ = GenerationConfig(**options)
    try:
        config_.validate()
    except UserError as err:
        raise ApiError(400, str(err)) from err
    return config_


def prompt_tokens(limber: LimberModel, prompt: list) -> int:
    texts = [segment for segment in prompt if isinstance(segment, str)]
    images = len(prompt) - len(texts)
    return sum(len(ids) for ids in limber.model.lm.tokenize(texts)) + images * limber.model.num_prefix_tokens


def completion_tokens(limber: LimberModel, text: str) -> int:
    return len(limber.model.lm.tokenize([text])[0]) if text else 0


def _completion_id() -> str:
    return f"chatcmpl-{secrets.token_hex(12)}"


async def stream_events(services: Services, limber: LimberModel, prompt: list, gen: GenerationConfig, model_id: str):
    """SSE lines: role chunk, one chunk per text piece, the finish chunk, [DONE] (an error event on failure)."""
    completion_id, created = _completion_id(), int(time.time())

    def event(delta: dict, finish: str | None = None) -> str:
        chunk = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_id,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        return f"data: {json.dumps(chunk)}\n\n"

    yield event({"role": "assistant", "content": ""})
    loop = asyncio.get_running_loop()
    executor = services.executors["stream"]
    pieces = reply_pieces(limber, prompt, gen)
    text = ""
    try:
        while (piece := await loop.run_in_executor(executor, next, pieces, None)) is not None:
            text += piece
            yield event({"content": piece})
    except Exception as err:  # noqa: BLE001 - the status line is sent already: report in the stream
        yield f"data: {json.dumps(error_body(f'generation failed: {one_line(err)}', 'server_error'))}\n\n"
        yield "data: [DONE]\n\n"
        return
    yield event({}, "length" if completion_tokens(limber, text.strip()) >= gen.max_new_tokens else "stop")
    yield "data: [DONE]\n\n"


def reply_pieces(limber: LimberModel, prompt: list, gen: GenerationConfig) -> Iterator[str]:
    """Text pieces of the reply to `prompt` (str text / PIL image segments), decoded as they come.

    The images go through `LimberModel.image_features`, as `LimberModel.generate` (the reply
    without streaming) sends them; nothing runs until the first piece is asked for, so the
    encoding too happens on the stream's worker thread.
    """
    images = [segment for segment in prompt if not isinstance(segment, str)]
    features = iter(limber.image_features(images).unbind(0)) if images else iter(())
    row = [segment if isinstance(segment, str) else next(features) for segment in prompt]
    yield from stream_answer(limber.model, row, gen)
