"""`vlbridge serve` end to end: the real command in a subprocess on a loopback port, driven by a real browser
(Playwright + Debian's chromium), the OpenAI Python client and a bounded load test.

The server serves tiny saved models and an index of 16 shapes-world images, with an API key. The page
tests upload an image and read the caption, classify with typed labels, ask a question, search by text
and see image results, and write a screenshot; every request the page makes goes to the server itself.
Reference answers come from the server's plain JSON routes, so the tests check the page and the clients,
not the model. The load test sends 200 concurrent mixed requests and checks every answer and the
server's memory (RSS after the load within LOAD_RSS_TOLERANCE of RSS after a warm-up of the same mix).
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from helpers import free_port
from helpers.serve_helpers import png_bytes, write_images

API_KEY = "e2e-key"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
LOAD_REQUESTS = 200  # concurrent requests of the load test
LOAD_RSS_TOLERANCE = 64 * 2**20  # bytes the server's RSS may grow between warm-up and after the load
HEADERS = {"authorization": f"Bearer {API_KEY}"}
PAGE_WAIT_MS = 300_000  # the page waits for a model answer at most this long (a loaded 2-core box: a caption can take 100 s)


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def server(serve_models, tmp_path_factory):
    """`python -m vlbridge serve ...` on a free loopback port; yields (base URL, process)."""
    from vlbridge.api import ClipModel
    from vlbridge.api.index_build import build_index

    models, _ = serve_models
    root = tmp_path_factory.mktemp("e2e")
    build_index(ClipModel.from_pretrained(models.clip), f"folder:{write_images(root / 'photos', 16)}", root / "index")
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [
        str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "vlbridge", "-q", "serve", "--model", str(models.limber), "--clip", str(models.clip),
               "--index", str(root / "index"), "--port", str(port), "--api-key", API_KEY, "--batch-window-ms", "10"]
    log = open(root / "server.log", "w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, root / "server.log")
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _wait_ready(url: str, process, log_path: Path, timeout: float = 600.0) -> None:  # a loaded 2-core CI box starts slowly
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vlbridge serve exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"vlbridge serve was not ready after {timeout:.0f} s: {log_path.read_text()[-2000:]}")


def post(url: str, path: str, body: dict) -> dict:
    response = httpx.post(f"{url}{path}", json=body, headers=HEADERS, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


# ------------------------------------------------------------------ the page in a real browser
@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (make setup installs it: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser, server):
    url, _ = server
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(120_000)  # clicks and fills: Playwright's 30 s ran out on a loaded 2-core box
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(url)
    page.wait_for_selector("#status.status-ok", timeout=30_000)
    page.click("#key-btn")  # the server wants a key: enter it the way a person does
    page.fill("#api-key", API_KEY)
    page.click("#key-save")
    page.requests = requests
    yield page
    outside = [u for u in requests if not u.startswith((url, "data:", "blob:"))]
    assert outside == [], f"the page made requests outside the server: {outside}"
    context.close()


@pytest.fixture(scope="module")
def upload(tmp_path_factory):
    path = tmp_path_factory.mktemp("upload") / "my-shapes.png"
    path.write_bytes(png_bytes(7))
    return path


@pytest.mark.browser
def test_page_captions_an_uploaded_image(page, server, upload):
    url, _ = server
    page.set_input_files("#file", str(upload))
    page.wait_for_selector("#preview:not([hidden])")
    page.click("#caption-btn")
    page.wait_for_selector("#caption-out.text", timeout=PAGE_WAIT_MS)
    expected = post(url, "/v1/caption", {"image": data_url(upload.read_bytes()), "max_new_tokens": 30})["captions"][0]
    assert page.text_content("#caption-out") == (expected or "(empty caption)")


@pytest.mark.browser
def test_page_classifies_with_typed_labels(page, server, upload):
    url, _ = server
    page.set_input_files("#file", str(upload))
    page.fill("#labels", "red circle, blue square, green star, yellow heart")
    page.fill("#templates", "a photo of a {}.\na drawing of a {}.")
    page.click("#classify-btn")
    page.wait_for_selector("#classify-out .label-row", timeout=PAGE_WAIT_MS)
    shown = [row.text_content() for row in page.query_selector_all("#classify-out .label-row .name")]
    expected = post(url, "/v1/classify", {"image": data_url(upload.read_bytes()),
                                          "labels": ["red circle", "blue square", "green star", "yellow heart"],
                                          "templates": ["a photo of a {}.", "a drawing of a {}."]})["labels"]
    assert shown == [row["label"] for row in expected]
    percents = [row.text_content() for row in page.query_selector_all("#classify-out .label-row .pct")]
    assert percents == [f"{100 * row['score']:.1f}%" for row in expected]


@pytest.mark.browser
def test_page_answers_a_question(page, server, upload):
    url, _ = server
    page.set_input_files("#file", str(upload))
    page.fill("#question", "what colour is the circle?")
    page.click("#ask-btn")
    page.wait_for_selector("#answer-out.text", timeout=PAGE_WAIT_MS)
    expected = post(url, "/v1/vqa", {"image": data_url(upload.read_bytes()), "question": "what colour is the circle?"})
    shown = page.text_content("#answer-out")
    assert shown == expected["answer"] if expected["answer"] else shown.startswith("(empty answer")
    assert page.is_hidden("#shots-box")  # this server has no example shots to offer


@pytest.mark.browser
def test_page_searches_by_text_and_shows_images(page, server, upload, tmp_path):
    url, _ = server
    page.fill("#search-q", "a large red circle")
    page.select_option("#search-k", "8")
    page.click("#search-btn")
    page.wait_for_selector("#results .result", timeout=PAGE_WAIT_MS)
    page.wait_for_function("[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)",
                           timeout=PAGE_WAIT_MS)
    expected = post(url, "/v1/search", {"query": "a large red circle", "k": 8})["results"]
    assert [c.text_content() for c in page.query_selector_all("#results .caption")] == [r["caption"] for r in expected]
    assert [c.text_content() for c in page.query_selector_all("#results .score")] == [f"{r['score']:.3f}" for r in expected]
    assert any("/v1/images/" in u and u.endswith("/thumbnail") for u in page.requests)
    page.set_input_files("#file", str(upload))  # then: images like the uploaded one
    page.evaluate("document.getElementById('results').replaceChildren()")
    page.click("#similar-btn")
    page.wait_for_selector("#results .result", timeout=PAGE_WAIT_MS)
    expected = post(url, "/v1/search", {"image": data_url(upload.read_bytes()), "k": 8})["results"]
    assert [c.text_content() for c in page.query_selector_all("#results .caption")] == [r["caption"] for r in expected]
    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000


# ------------------------------------------------------------------ the OpenAI Python client
def test_openai_client_chat_completions(server, upload):
    import openai

    url, _ = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0)
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(upload.read_bytes())}},
                                             {"type": "text", "text": "what colour is the circle?"}]}]
    reply = client.chat.completions.create(model="limber:limber", messages=messages, max_tokens=8)
    expected = post(url, "/v1/vqa", {"image": data_url(upload.read_bytes()), "question": "what colour is the circle?",
                                     "max_new_tokens": 8})["answer"]
    assert reply.choices[0].message.content == expected and reply.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(model="limber:limber", messages=messages, max_tokens=8, stream=True)
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream]
    assert "".join(pieces).strip() == expected
    with pytest.raises(openai.BadRequestError, match="needs an image"):
        client.chat.completions.create(model="limber:limber", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
    assert [m.id for m in client.models.list()] == ["limber:limber", "clip:clip"]


def test_openai_client_embeddings(server):
    import numpy as np
    import openai

    url, _ = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0)
    texts = ["a red circle", "a blue square"]
    result = client.embeddings.create(model="clip:clip", input=texts)  # the client asks for base64 and decodes it
    expected = post(url, "/v1/embeddings", {"input": texts, "encoding_format": "float"})["data"]
    for got, want in zip(result.data, expected):
        np.testing.assert_allclose(got.embedding, want["embedding"], atol=1e-6)
    floats = client.embeddings.create(model="clip:clip", input="a red circle", encoding_format="float")
    np.testing.assert_allclose(floats.data[0].embedding, expected[0]["embedding"], atol=1e-6)


# ------------------------------------------------------------------ bounded loopback load test
def mixed_requests(count: int) -> list[tuple[str, dict]]:
    images = [data_url(png_bytes(seed)) for seed in range(8)]
    chat = lambda i: {"max_tokens": 6, "messages": [{"role": "user", "content": [  # noqa: E731
        {"type": "image_url", "image_url": {"url": images[i % 8]}}, {"type": "text", "text": "what is it?"}]}]}
    kinds = [
        lambda i: ("/v1/caption", {"image": images[i % 8], "max_new_tokens": 6}),
        lambda i: ("/v1/classify", {"image": images[i % 8], "labels": ["circle", "square", f"shape {i % 5}"]}),
        lambda i: ("/v1/embeddings", {"input": [f"a shape number {i}", {"type": "image_url", "image_url": {"url": images[i % 8]}}]}),
        lambda i: ("/v1/search", {"query": f"a red circle {i % 7}", "k": 5}),
        lambda i: ("/v1/vqa", {"image": images[i % 8], "question": "how many shapes?"}),
        lambda i: ("/v1/chat/completions", chat(i)),
    ]
    return [kinds[i % len(kinds)](i) for i in range(count)]


def fire(url: str, requests: list[tuple[str, dict]]) -> list[httpx.Response]:
    """All `requests` at once from one asyncio client (in its own thread: Playwright's loop may be running here)."""
    from concurrent.futures import ThreadPoolExecutor

    async def send_all():
        limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=len(requests))
        async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=300, limits=limits) as client:
            return await asyncio.gather(*(client.post(path, json=body) for path, body in requests))

    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, send_all()).result()


def test_load_200_concurrent_mixed_requests_all_answered_memory_flat(server):
    import psutil

    url, process = server
    fire(url, mixed_requests(60))  # warm-up: every route, every allocation pattern
    rss_before = psutil.Process(process.pid).memory_info().rss
    started = time.perf_counter()
    responses = fire(url, mixed_requests(LOAD_REQUESTS))
    elapsed = time.perf_counter() - started
    failures = [(r.request.url.path, r.status_code, r.text[:200]) for r in responses if r.status_code != 200]
    assert failures == [] and len(responses) == LOAD_REQUESTS
    assert all("error" not in r.json() for r in responses)
    growth = psutil.Process(process.pid).memory_info().rss - rss_before
    print(f"{LOAD_REQUESTS} requests in {elapsed:.1f} s; server RSS {rss_before / 2**20:.0f} MiB, growth {growth / 2**20:+.1f} MiB")
    assert growth < LOAD_RSS_TOLERANCE, f"server RSS grew by {growth / 2**20:.1f} MiB over {LOAD_REQUESTS} requests"
    assert httpx.get(f"{url}/healthz").status_code == 200
