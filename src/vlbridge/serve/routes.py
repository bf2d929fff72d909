"""The model routes: caption, VQA, classify, embeddings (OpenAI shape), search and index images.

    POST /v1/caption     {"images": [IMAGE, ...] | "image": IMAGE, "prompt"?, decoding options}
                         -> {"captions": [...]}
    POST /v1/vqa         {"image", "question", "shots"?: [{"image", "question", "answer"}] | N, "template"?, decoding}
                         -> {"answer": "..."}; "shots": N uses the first N of the server's example shots
                         (`vlbridge serve --demo` has solved shapes-world questions; /readyz says how many)
    POST /v1/classify    {"image", "labels": [...], "templates"?: ["a photo of a {}.", ...]}
                         -> {"labels": [{"label", "score"}, ...]} best first, scores sum to 1
    POST /v1/embeddings  OpenAI: {"model"?, "input": str | [str | {"type": "text"|"image_url", ...}],
                         "encoding_format"?: "float"|"base64"} -> {"data": [{"embedding", "index"}], ...}
    POST /v1/search      {"query": TEXT | "image": IMAGE, "k"?: 12}
                         -> {"results": [{"id", "score", "caption", "image_url", "thumbnail_url"}]}
    GET  /v1/images/{id}            the indexed image file
    GET  /v1/images/{id}/thumbnail  a JPEG of at most `thumbnail_px` a side (cached in memory)

IMAGE is a data URL or base64 string in JSON, or a multipart file part of that name (the
multipart form's other fields are text; `labels` may be comma-separated there, `templates` one
per line). Decoding options: strategy, max_new_tokens, num_beams, length_penalty, top_p,
temperature, seed. Images are decoded in the thread pool, model work goes through the services'
micro-batchers, so the event loop only moves bytes. Embedding `usage` counts words and images
(the CLIP tokenizer's count is not exposed).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import mimetypes

import numpy as np
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response
from PIL import Image

from vlbridge.api.clip import check_labels, rank_labels, resolve_templates
from vlbridge.api.models import DEFAULT_TEMPLATES, generation_config
from vlbridge.errors import UserError
from vlbridge.serve.inputs import (
    ApiError, image_from_value, images_of, int_field, list_field, one_image, read_body, text_field,
)
from vlbridge.serve.services import ServeConfig, Services
from vlbridge.serve.work import config_key

router = APIRouter()

DECODING_TYPES = {"strategy": str, "max_new_tokens": int, "num_beams": int, "length_penalty": float,
                  "top_p": float, "temperature": float, "seed": int}  # request field -> type
MAX_SHOTS = 8  # solved examples one VQA request may carry
THUMBNAIL_CACHE = 2048  # thumbnails kept in memory


def context(request: Request) -> tuple[Services, ServeConfig]:
    state = request.app.state.vlbridge
    return state.ready(), state.config


def need(services: Services, kind: str, fields: dict | None = None):
    """The model of `kind` ("limber" | "clip" | "index"), 404 when the server has none or `model` names another."""
    model = {"limber": services.limber, "clip": services.clip, "index": services.index}[kind]
    if model is None:
        flag = {"limber": "--model", "clip": "--clip", "index": "--index"}[kind]
        raise ApiError(404, f"this server has no {kind} (start it with {flag})", code="model_not_found")
    requested = (fields or {}).get("model")
    model_id = services.model_ids().get(kind)
    if requested is not None and kind != "index" and requested not in (model_id, kind):
        raise ApiError(404, f"model {requested!r} is not served here; this route serves {model_id!r}", "model",
                       "model_not_found")
    return model


def decoding(fields: dict, config: ServeConfig, default_max: int):
    """GenerationConfig from the request's decoding fields (multipart text converted), validated."""
    options = {"max_new_tokens": default_max}
    for name, kind in DECODING_TYPES.items():
        if fields.get(name) is None:
            continue
        value = fields[name]
        try:
            options[name] = kind(value) if isinstance(value, str) and kind is not str else value
        except ValueError:
            raise ApiError(400, f"{name} must be a {kind.__name__}, got {value!r}", name) from None
        if kind is not str and (isinstance(options[name], bool) or not isinstance(options[name], (int, float))):
            raise ApiError(400, f"{name} must be a number, got {value!r}", name)
    if not 1 <= int(options["max_new_tokens"]) <= config.max_new_tokens:
        raise ApiError(400, f"max_new_tokens must be from 1 to {config.max_new_tokens}, got {options['max_new_tokens']}",
                       "max_new_tokens")
    try:
        return generation_config(**options)
    except UserError as err:
        raise ApiError(400, str(err)) from err


async def generate(services: Services, prompts: list, gen) -> list[str]:
    batcher = services.batchers["generate"]
    return list(await asyncio.gather(*(batcher.submit((prompt, gen), config_key(gen)) for prompt in prompts)))


@router.post("/v1/caption")
async def caption(request: Request):
    services, config = context(request)
    fields, files = await read_body(request)
    limber = need(services, "limber", fields)
    images = await run_in_threadpool(images_of, fields, files, ("image", "images"), config.max_images)
    if not images:
        raise ApiError(400, "missing image: send 'image' or 'images' as multipart files or data URLs / base64", "image")
    prompt = fields.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ApiError(400, f"prompt must be text, got {type(prompt).__name__}", "prompt")
    gen = decoding(fields, config, default_max=30)
    captions = await generate(services, [limber.caption_prompt(image, prompt) for image in images], gen)
    return {"object": "caption", "model": services.model_ids()["limber"], "captions": captions}


@router.post("/v1/vqa")
async def vqa(request: Request):
    services, config = context(request)
    fields, files = await read_body(request)
    limber = need(services, "limber", fields)
    image = await run_in_threadpool(one_image, fields, files)
    question = text_field(fields, "question")
    shots = fields.get("shots") or []
    if isinstance(shots, (int, str)) and not isinstance(shots, bool):
        solved = server_shots(services, shots)
    else:
        if not isinstance(shots, list) or len(shots) > MAX_SHOTS or not all(isinstance(s, dict) for s in shots):
            raise ApiError(400, f"shots must be a list of at most {MAX_SHOTS} objects {{image, question, answer}} "
                                "or a number of the server's example shots", "shots")
        solved = [{**shot, "image": await run_in_threadpool(image_from_value, shot.get("image"), f"shots[{n}].image")}
                  for n, shot in enumerate(shots)]
    template = text_field(fields, "template", required=False) or config.vqa_template
    gen = decoding(fields, config, default_max=10)
    prompt = limber.question_prompt(image, question, solved, template)
    answer = (await generate(services, [prompt], gen))[0]
    return {"object": "vqa.answer", "model": services.model_ids()["limber"], "answer": answer, "shots": len(solved)}


def server_shots(services: Services, count) -> list[dict]:
    """The first `count` of the server's solved examples (`"shots": 2`; multipart sends "2"); 400 beyond them."""
    try:
        count = int(count)
    except ValueError:
        raise ApiError(400, f"shots must be a list or a number, got {count!r}", "shots") from None
    available = len(services.example_shots)
    if not 0 <= count <= available:
        raise ApiError(400, f"this server has {available} example shots, so \"shots\": {count} cannot be met; "
                            "send shots as a list of {image, question, answer} instead", "shots")
    return services.example_shots[:count]


@router.post("/v1/classify")
async def classify(request: Request):
    services, _ = context(request)
    fields, files = await read_body(request)
    clip = need(services, "clip", fields)
    image = await run_in_threadpool(one_image, fields, files)
    labels = check_labels(list_field(fields, "labels"))
    templates = resolve_templates(list_field(fields, "templates", required=False, separator="\n") or list(DEFAULT_TEMPLATES))
    embedding = await services.batchers["embed_images"].submit(image)
    loop = asyncio.get_running_loop()
    classifier = await loop.run_in_executor(services.executors["clip"], clip.classifier, labels, templates)
    scores = clip.scores(embedding[None], classifier)[0]
    return {"object": "classification", "model": services.model_ids()["clip"], "labels": rank_labels(labels, scores)}


@router.post("/v1/embeddings")
async def embeddings(request: Request):
    services, config = context(request)
    fields, files = await read_body(request)
    need(services, "clip", fields)  # 503 when no CLIP is served
    inputs = await run_in_threadpool(embedding_inputs, fields, files, config)
    if fields.get("dimensions") not in (None, services.embedding_dim):
        raise ApiError(400, f"dimensions must be {services.embedding_dim} (this CLIP's size) or left out", "dimensions")
    encoding = fields.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise ApiError(400, f"encoding_format must be float or base64, got {encoding!r}", "encoding_format")
    batchers = services.batchers
    vectors = await asyncio.gather(*(
        batchers["embed_texts"].submit(value) if kind == "text" else batchers["embed_images"].submit(value)
        for kind, value in inputs
    ))
    data = [{"object": "embedding", "index": i, "embedding": _encode_vector(v, encoding)} for i, v in enumerate(vectors)]
    tokens = sum(len(value.split()) if kind == "text" else 1 for kind, value in inputs)
    return {"object": "list", "data": data, "model": services.model_ids()["clip"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def embedding_inputs(fields: dict, files: dict, config: ServeConfig) -> list[tuple[str, object]]:
    """[("text", str) | ("image", PIL)] from `input` (OpenAI shape plus image parts) and multipart images."""
    value = fields.get("input")
    items = [] if value is None else (value if isinstance(value, list) else [value])
    inputs: list[tuple[str, object]] = [("image", image) for image in images_of({}, files, ("image", "input"), config.max_images)]
    for number, item in enumerate(items):
        where = f"input[{number}]"
        if isinstance(item, str):
            if not item.strip():
                raise ApiError(400, f"{where} is empty; expected non-empty text", "input")
            inputs.append(("text", item))
        elif isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str):
            inputs.append(("text", item["text"]))
        elif isinstance(item, dict) and item.get("type") in ("image_url", "image"):
            inputs.append(("image", image_from_value(item.get("image_url", item.get("image")), where)))
        elif isinstance(item, (int, list)):
            raise ApiError(400, f"{where}: token arrays are not accepted; send text (or image parts)", "input")
        else:
            raise ApiError(400, f"{where} must be text or {{'type': 'image_url', 'image_url': {{'url': DATA_URL}}}}", "input")
    if not inputs:
        raise ApiError(400, "missing input: text, a list of texts, or image parts", "input")
    if len(inputs) > max(config.max_images, 256):
        raise ApiError(400, f"at most {max(config.max_images, 256)} inputs per request, got {len(inputs)}", "input")
    return inputs


def _encode_vector(vector, encoding: str):
    array = np.asarray(vector, dtype=np.float32)
    return base64.b64encode(array.astype("<f4").tobytes()).decode() if encoding == "base64" else array.tolist()


@router.post("/v1/search")
async def search(request: Request):
    services, config = context(request)
    fields, files = await read_body(request)
    index = need(services, "index")
    k = int_field(fields, "k", 12, 1, config.search_max_k)
    images = await run_in_threadpool(images_of, fields, files, ("image",), 1)
    query = fields.get("query")
    if images and query:
        raise ApiError(400, "send either a text query or an image, not both", "query")
    if images:
        vector = await services.batchers["embed_images"].submit(images[0])
    else:
        vector = await services.batchers["embed_texts"].submit(text_field(fields, "query", max_chars=500))
    hits = (await run_in_threadpool(index.search, vector[None], k))[0]
    results = [{"id": hit.id, "score": hit.score, "caption": index.entry(hit.id)["caption"],
                "image_url": f"/v1/images/{hit.id}", "thumbnail_url": f"/v1/images/{hit.id}/thumbnail"} for hit in hits]
    return {"object": "search.results", "model": services.model_ids()["clip"], "index_kind": index.kind, "results": results}


def _index_file(services: Services, image_id: str):
    index = need(services, "index")
    if not image_id.isdigit():
        raise ApiError(404, f"no image {image_id!r}: ids are whole numbers from search results", "id")
    try:
        return index.image_file(int(image_id))
    except UserError as err:
        raise ApiError(404, str(err), "id") from err


@router.get("/v1/images/{image_id}")
async def image_file(request: Request, image_id: str):
    services, _ = context(request)
    path = _index_file(services, image_id)
    return FileResponse(path, media_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream")


@router.get("/v1/images/{image_id}/thumbnail")
async def thumbnail(request: Request, image_id: str):
    services, config = context(request)
    path = _index_file(services, image_id)
    try:
        data = await run_in_threadpool(thumbnail_bytes, str(path), path.stat().st_mtime_ns, config.thumbnail_px)
    except (OSError, ValueError) as err:
        raise ApiError(415, f"image {image_id} cannot be read: {err}", "id") from err
    return Response(data, media_type="image/jpeg", headers={"cache-control": "max-age=3600"})


@functools.lru_cache(maxsize=THUMBNAIL_CACHE)
def thumbnail_bytes(path: str, mtime_ns: int, side: int) -> bytes:
    """JPEG of the image at `path`, at most `side` pixels a side (RGBA composited onto white)."""
    from vlbridge.data.records import open_image

    image = open_image(path)
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
