"""The server's routes in process (FastAPI TestClient) on tiny saved models: answers equal the Python API's,
every bad input gets its status and a one-line OpenAI-shaped error, the API key guards /v1, readiness.

Spec: vlbridge.serve (app.py, routes.py, chat.py, inputs.py).
"""

from __future__ import annotations

import base64
import json
import threading

import numpy as np
import pytest
import torch

from helpers.serve_helpers import png_bytes, write_images


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def served(serve_models, tmp_path_factory):
    from vlbridge.api import ClipModel
    from vlbridge.api.index_build import build_index
    from vlbridge.serve import load_services

    torch.set_num_threads(1)
    models, _ = serve_models
    root = tmp_path_factory.mktemp("routes")
    build_index(ClipModel.from_pretrained(models.clip), f"folder:{write_images(root / 'photos', 8)}", root / "index")
    return load_services(models.limber, models.clip, root / "index")


def client_for(services, **config):
    """A TestClient over its own Services (same loaded models, own batchers and worker threads)."""
    from fastapi.testclient import TestClient

    from vlbridge.serve import ServeConfig, Services, create_app

    if isinstance(services, Services):
        services = Services(services.limber, services.clip, services.index, example_shots=services.example_shots)
    return TestClient(create_app(services, ServeConfig(**config)))


@pytest.fixture(scope="module")
def client(served):
    with client_for(served, max_request_bytes=200_000, batch_window_ms=20) as test_client:
        yield test_client


IMAGE = png_bytes(0)
OTHER = png_bytes(1)


def assert_error(response, status: int, fragment: str, param: str | None = None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert fragment in error["message"] and "\n" not in error["message"]
    if param is not None:
        assert error["param"] == param


# ------------------------------------------------------------------ answers equal the Python API's
def test_caption_json_and_multipart(client, served):
    expected = served.limber.caption([IMAGE, OTHER], max_new_tokens=8)
    response = client.post("/v1/caption", json={"images": [data_url(IMAGE), base64.b64encode(OTHER).decode()], "max_new_tokens": 8})
    assert response.status_code == 200 and response.json()["captions"] == expected
    files = [("image", ("a.png", IMAGE, "image/png")), ("image", ("b.png", OTHER, "image/png"))]
    response = client.post("/v1/caption", files=files, data={"max_new_tokens": "8"})
    assert response.json()["captions"] == expected
    prompted = client.post("/v1/caption", json={"image": data_url(IMAGE), "prompt": "Q:", "max_new_tokens": 5})
    assert prompted.json()["captions"] == [served.limber.caption(IMAGE, prompt="Q:", max_new_tokens=5)]


def test_vqa_with_shots(client, served):
    shots = [{"image": data_url(OTHER), "question": "how many shapes?", "answer": "two"}]
    response = client.post("/v1/vqa", json={"image": data_url(IMAGE), "question": "what colour is it?", "shots": shots})
    expected = served.limber.answer(IMAGE, "what colour is it?", shots=[(OTHER, "how many shapes?", "two")])
    assert response.status_code == 200 and response.json()["answer"] == expected and response.json()["shots"] == 1
    framed = client.post("/v1/vqa", json={"image": data_url(IMAGE), "question": "what?", "template": "Question: {question} Answer:"})
    assert framed.json()["answer"] == served.limber.answer(IMAGE, "what?", template="Question: {question} Answer:")


def test_vqa_with_the_servers_example_shots(client, served):
    from vlbridge.serve import Services

    examples = [{"image": OTHER, "question": "how many shapes?", "answer": "two"},
                {"image": IMAGE, "question": "is it red?", "answer": "yes"}]
    assert client.get("/readyz").json()["example_shots"] == 0
    with client_for(Services(served.limber, served.clip, served.index, example_shots=examples)) as with_examples:
        assert with_examples.get("/readyz").json()["example_shots"] == 2
        response = with_examples.post("/v1/vqa", json={"image": data_url(IMAGE), "question": "what colour is it?", "shots": 2})
        expected = served.limber.answer(IMAGE, "what colour is it?", shots=examples)
        assert response.status_code == 200 and response.json() == {**response.json(), "answer": expected, "shots": 2}
        form = with_examples.post("/v1/vqa", files={"image": ("a.png", IMAGE, "image/png")},
                                  data={"question": "what colour is it?", "shots": "1"})
        assert form.json()["answer"] == served.limber.answer(IMAGE, "what colour is it?", shots=examples[:1])
        assert form.json()["shots"] == 1
        assert_error(with_examples.post("/v1/vqa", json={"image": data_url(IMAGE), "question": "what?", "shots": 3}),
                     400, "this server has 2 example shots", "shots")
        assert_error(with_examples.post("/v1/vqa", json={"image": data_url(IMAGE), "question": "what?", "shots": "two"}),
                     400, "shots must be a list or a number", "shots")


def test_classify_json_and_multipart(client, served):
    labels, templates = ["circle", "square", "star"], ["a photo of a {}.", "a sketch of a {}."]
    expected = served.clip.classify(IMAGE, labels, templates=templates)
    response = client.post("/v1/classify", json={"image": data_url(IMAGE), "labels": labels, "templates": templates})
    got = response.json()["labels"]
    assert [r["label"] for r in got] == [r["label"] for r in expected]
    assert [r["score"] for r in got] == pytest.approx([r["score"] for r in expected], abs=1e-5)
    form = client.post("/v1/classify", files={"image": ("a.png", IMAGE, "image/png")},
                       data={"labels": "circle, square, star", "templates": "a photo of a {}.\na sketch of a {}."})
    assert [r["label"] for r in form.json()["labels"]] == [r["label"] for r in expected]


def test_embeddings_text_and_image_float_and_base64(client, served):
    inputs = ["a red circle", {"type": "image_url", "image_url": {"url": data_url(IMAGE)}}]
    response = client.post("/v1/embeddings", json={"input": inputs, "model": "clip"})
    body = response.json()
    assert response.status_code == 200 and body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1]
    np.testing.assert_allclose(body["data"][0]["embedding"], served.clip.embed_texts(["a red circle"])[0], atol=1e-5)
    np.testing.assert_allclose(body["data"][1]["embedding"], served.clip.embed_images([IMAGE])[0], atol=1e-5)
    packed = client.post("/v1/embeddings", json={"input": "a red circle", "encoding_format": "base64"}).json()
    vector = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vector, body["data"][0]["embedding"], atol=1e-6)
    assert packed["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


def test_search_by_text_and_by_image(client, served):
    index = served.index
    response = client.post("/v1/search", json={"query": "a red circle", "k": 4})
    expected = index.search(served.clip.embed_texts(["a red circle"]), 4)[0]
    results = response.json()["results"]
    assert [r["id"] for r in results] == [h.id for h in expected]
    assert [r["score"] for r in results] == pytest.approx([h.score for h in expected], abs=1e-5)
    assert [r["caption"] for r in results] == [index.entry(h.id)["caption"] for h in expected]
    assert results[0]["thumbnail_url"] == f"/v1/images/{expected[0].id}/thumbnail"
    by_image = client.post("/v1/search", files={"image": ("q.png", IMAGE, "image/png")}, data={"k": "3"}).json()["results"]
    assert [r["id"] for r in by_image] == [h.id for h in index.search(served.clip.embed_images([IMAGE]), 3)[0]]


def test_images_and_thumbnails(client, served):
    from PIL import Image
    import io

    original = client.get("/v1/images/2")
    assert original.status_code == 200 and original.content == served.index.image_file(2).read_bytes()
    thumb = client.get("/v1/images/2/thumbnail")
    assert thumb.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(thumb.content)).size == (48, 48)


def test_chat_question_uses_earlier_turns_as_shots(client, served):
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(OTHER)}},
                                     {"type": "text", "text": "how many shapes?"}]},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": [{"type": "text", "text": "what colour is it?"},
                                     {"type": "image_url", "image_url": {"url": data_url(IMAGE)}}]},
    ]
    response = client.post("/v1/chat/completions", json={"model": "limber", "messages": messages, "max_tokens": 7})
    body = response.json()
    expected = served.limber.answer(IMAGE, "what colour is it?", shots=[(OTHER, "how many shapes?", "two")], max_new_tokens=7)
    assert response.status_code == 200 and body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": expected}
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]


def test_chat_text_without_question_mark_is_continued_as_a_caption(client, served):
    content = [{"type": "image_url", "image_url": {"url": data_url(IMAGE)}}, {"type": "text", "text": "A drawing of"}]
    body = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}]}).json()
    assert body["choices"][0]["message"]["content"] == served.limber.caption(IMAGE, prompt="A drawing of")


def test_chat_stream_is_sse_ending_in_done_and_equal_to_the_reply(client):
    content = [{"type": "image_url", "image_url": {"url": data_url(IMAGE)}}, {"type": "text", "text": "what is it?"}]
    request = {"messages": [{"role": "user", "content": content}], "max_tokens": 20}
    whole = client.post("/v1/chat/completions", json=request).json()["choices"][0]["message"]["content"]
    assert len(whole.split()) > 1  # several words: the stream sends a word once the next whitespace is decoded
    with client.stream("POST", "/v1/chat/completions", json={**request, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks[1:-1]]
    assert len(pieces) > 1 and "".join(pieces).strip() == whole


def test_models_health_and_page(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["index"] == {"images": 8, "kind": "exact"}
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["limber:limber", "clip:clip"]
    page = client.get("/")
    assert page.status_code == 200 and 'type="file"' in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    text = page.text + client.get("/static/app.js").text + client.get("/static/style.css").text
    assert "http://" not in text and "https://" not in text  # nothing is loaded from elsewhere


# ------------------------------------------------------------------ bad input
BAD_REQUESTS = [
    ("/v1/caption", {"image": "https://example.org/cat.png"}, 400, "remote image URLs are never fetched", "image"),
    ("/v1/caption", {"image": data_url(b"hello", "text/plain")}, 415, "expected an image data URL", "image"),
    ("/v1/caption", {"image": base64.b64encode(b"GIF89a-not-really").decode()}, 415, "not a readable image", "image"),
    ("/v1/caption", {"image": "%%%not base64"}, 400, "not valid base64", "image"),
    ("/v1/caption", {"image": ""}, 400, "must be an image", "image"),
    ("/v1/caption", {}, 400, "missing image", "image"),
    ("/v1/caption", {"image": data_url(IMAGE), "max_new_tokens": 0}, 400, "max_new_tokens must be from 1", "max_new_tokens"),
    ("/v1/caption", {"image": data_url(IMAGE), "strategy": "magic"}, 400, "generation strategy must be one of", None),
    ("/v1/caption", {"image": data_url(IMAGE), "model": "gpt-4o"}, 404, "is not served here", "model"),
    ("/v1/vqa", {"image": data_url(IMAGE)}, 400, "missing question", "question"),
    ("/v1/vqa", {"image": data_url(IMAGE), "question": "q?", "shots": "two"}, 400, "shots must be a list", "shots"),
    ("/v1/vqa", {"image": data_url(IMAGE), "question": "q?", "template": "no field"}, 400, "exactly one {question}", None),
    ("/v1/classify", {"image": data_url(IMAGE), "labels": []}, 400, "at least one candidate label", None),
    ("/v1/classify", {"image": data_url(IMAGE), "labels": ["a", "a"]}, 400, "appears more than once", None),
    ("/v1/classify", {"image": data_url(IMAGE), "labels": ["a"], "templates": ["x"]}, 400, "must contain {}", None),
    ("/v1/classify", {"labels": ["a"]}, 400, "missing image", "image"),
    ("/v1/embeddings", {"input": [[1, 2, 3]]}, 400, "token arrays are not accepted", "input"),
    ("/v1/embeddings", {"input": ""}, 400, "is empty", "input"),
    ("/v1/embeddings", {"input": "x", "dimensions": 3}, 400, "dimensions must be", "dimensions"),
    ("/v1/embeddings", {"input": "x", "encoding_format": "int8"}, 400, "encoding_format must be", "encoding_format"),
    ("/v1/search", {"query": "x", "k": 0}, 400, "k must be a whole number from 1", "k"),
    ("/v1/search", {}, 400, "missing query", "query"),
    ("/v1/search", {"query": "x", "image": data_url(IMAGE)}, 400, "not both", "query"),
    ("/v1/chat/completions", {"messages": []}, 400, "non-empty list", "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, 400, "needs an image", "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "assistant", "content": "hi"}]}, 400, "expected a user turn", "messages"),
    ("/v1/chat/completions", {"n": 2, "messages": [{"role": "user", "content": "hi"}]}, 400, "n must be 1", "n"),
    ("/v1/chat/completions", {"stop": ["\n"], "messages": [{"role": "user", "content": "hi"}]}, 400, "stop sequences", "stop"),
    ("/v1/chat/completions", {"max_tokens": 10_000, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(IMAGE)}}]}]}, 400, "max_tokens must be", "max_tokens"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://127.0.0.1/x.png"}}]}]}, 400, "never fetched", None),
]


@pytest.mark.parametrize("path,body,status,fragment,param", BAD_REQUESTS,
                         ids=[f"{p.rsplit('/', 1)[-1]}-{f[:24]}" for p, _, _, f, _ in BAD_REQUESTS])
def test_bad_input_gets_status_and_one_line(client, path, body, status, fragment, param):
    assert_error(client.post(path, json=body), status, fragment, param)


def test_malformed_bodies(client):
    assert_error(client.post("/v1/caption", content=b"{not json", headers={"content-type": "application/json"}),
                 400, "not valid JSON")
    assert_error(client.post("/v1/caption", content=b"[1, 2]", headers={"content-type": "application/json"}),
                 400, "must be a JSON object")
    assert_error(client.post("/v1/caption", content=b""), 400, "body is empty")
    assert_error(client.post("/v1/caption", files={"image": ("notes.txt", b"plain text", "text/plain")}), 415,
                 "not a readable image", "image")
    assert_error(client.post("/v1/nothing-here", json={}), 404, "no such route")
    assert_error(client.get("/v1/caption"), 405, "Method Not Allowed")


def test_oversized_bodies_get_413(client):
    big = {"image": data_url(b"\0" * 300_000)}
    assert_error(client.post("/v1/caption", json=big), 413, "larger than the limit")

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(30):
            yield b"x" * 10_000

    assert_error(client.post("/v1/caption", content=chunks(), headers={"content-type": "application/json"}),
                 413, "larger than the limit")


def test_image_ids_and_paths_stay_in_the_index(client):
    for path, fragment in [("/v1/images/999", "no image 999"), ("/v1/images/-1", "ids are whole numbers"),
                           ("/v1/images/abc/thumbnail", "ids are whole numbers")]:
        assert_error(client.get(path), 404, fragment)
    for path in ("/v1/images/..%2F..%2Fetc%2Fpasswd", "/v1/images/%2Fetc%2Fpasswd", "/v1/images/../../etc/passwd"):
        response = client.get(path)
        assert response.status_code == 404 and "root:" not in response.text


# ------------------------------------------------------------------ API key, readiness, batching
def test_api_key_guards_every_route_but_health(served):
    with client_for(served, api_key="s3cret") as guarded:
        assert guarded.get("/healthz").status_code == 200 and guarded.get("/readyz").status_code == 200
        calls = [("get", "/v1/models", None), ("post", "/v1/caption", {"image": data_url(IMAGE)}),
                 ("post", "/v1/search", {"query": "x"}), ("get", "/v1/images/0"), ("get", "/openapi.json", None),
                 ("post", "/v1/chat/completions", {"messages": []}), ("post", "/v1/embeddings", {"input": "x"})]
        for method, path, body in [(c[0], c[1], c[2] if len(c) > 2 else None) for c in calls]:
            for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret"}):
                response = getattr(guarded, method)(path, headers=headers, **({"json": body} if body is not None else {}))
                assert_error(response, 401, "API key")
                assert response.headers["www-authenticate"] == "Bearer"
        ok = guarded.post("/v1/search", json={"query": "x"}, headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_readyz_is_503_while_loading_and_after_a_failed_load(served):
    release = threading.Event()

    def slow_loader():
        release.wait(30)
        return served

    with client_for(slow_loader) as loading:
        assert loading.get("/healthz").status_code == 200
        assert_error(loading.get("/readyz"), 503, "still loading")
        assert_error(loading.post("/v1/caption", json={"image": data_url(IMAGE)}), 503, "still loading")
        release.set()
        for _ in range(200):
            if loading.get("/readyz").status_code == 200:
                break
            threading.Event().wait(0.05)
        assert loading.get("/readyz").status_code == 200

    def broken_loader():
        raise FileNotFoundError("runs/limber/limber.yaml")

    with client_for(broken_loader) as broken:
        for _ in range(100):
            if broken.app.state.vlbridge.load_error:
                break
            threading.Event().wait(0.02)
        assert_error(broken.get("/readyz"), 503, "failed to load: runs/limber/limber.yaml")


def test_concurrent_requests_share_model_calls_and_answer_as_alone(served):
    import asyncio

    import httpx

    from vlbridge.serve import ServeConfig, Services, create_app

    images = [png_bytes(seed) for seed in range(6)]
    alone = [served.limber.caption(image, max_new_tokens=6) for image in images]

    async def burst(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            responses = await asyncio.gather(*(http.post("/v1/caption", json={"image": data_url(image), "max_new_tokens": 6})
                                               for image in images))
        return [r.json()["captions"][0] for r in responses]

    for max_batch, shared in ((16, True), (1, False)):
        services = Services(served.limber, served.clip, served.index)
        app = create_app(services, ServeConfig(batch_window_ms=50, max_batch=max_batch))
        app.state.vlbridge.services = services.start(app.config)  # what the lifespan does (ASGITransport runs none)
        assert asyncio.run(burst(app)) == alone
        stats = services.batchers["generate"].stats
        assert (stats.largest > 1) == shared and stats.items == len(images)
        asyncio.run(services.stop())
