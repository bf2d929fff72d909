"""The FastAPI application: guards, errors in OpenAI's shape, health, model list and the page.

    app = create_app(load_services(model=..., clip=..., index=...), ServeConfig(api_key="..."))
    uvicorn.run(app, host="127.0.0.1", port=8000)

`create_app` takes loaded `Services` or a function that loads them; with a function the server
answers at once (/healthz 200) and loads in a background thread (/readyz 503 until done).

Routes (the model routes live in `routes.py` and `chat.py`):
    GET  /healthz           200 while the process runs
    GET  /readyz            200 once models are loaded, else 503 (with the loading error if it failed)
    GET  /v1/models         OpenAI model list
    GET  /                  the page (static/index.html; its script and style under /static/)

Guards, before any route: a body over `max_request_bytes` gets 413 (from Content-Length, or
while reading a body sent without one); with an API key, every /v1/ route (and the OpenAPI
schema) needs `Authorization: Bearer KEY` (401 otherwise). The health routes stay open, and so
do the page and its static files, which hold no data (the page sends the key with every call).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from contextlib import asynccontextmanager
from importlib import resources
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from vlbridge import __version__
from vlbridge.errors import UserError, one_line
from vlbridge.serve.inputs import ApiError, error_body
from vlbridge.serve.services import ServeConfig, Services

log = logging.getLogger(__name__)

OPEN_PATHS = ("/healthz", "/readyz")  # never need the API key


class ServerState:
    """What routes read: config, the services once loaded, and a loading failure if any."""

    def __init__(self, config: ServeConfig):
        self.config = config  # ServeConfig
        self.services: Services | None = None  # set when loading finished
        self.load_error: str | None = None  # one line, when loading failed
        self.started = time.time()  # for /v1/models "created"

    def ready(self) -> Services:
        """The services, or a 503 ApiError while loading / after a failed load."""
        if self.services is not None:
            return self.services
        if self.load_error:
            raise ApiError(503, f"the models failed to load: {self.load_error}")
        raise ApiError(503, "the models are still loading; retry shortly (GET /readyz says when they are ready)")


def create_app(services: Services | Callable[[], Services], config: ServeConfig | None = None) -> FastAPI:
    """The server app over loaded `services` (or a loader run in the background)."""
    from vlbridge.serve import chat, routes

    config = config or ServeConfig()
    state = ServerState(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if isinstance(services, Services):
            state.services = services.start(config)
        else:
            threading.Thread(target=_load_in_background, args=(state, services), daemon=True).start()
        yield
        if state.services is not None:
            await state.services.stop()

    app = FastAPI(title="vlbridge", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.vlbridge = state
    _add_error_handlers(app)
    _add_basic_routes(app, state)
    app.include_router(routes.router)
    app.include_router(chat.router)
    static = resources.files("vlbridge.serve").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    return Guard(app, config)


def _load_in_background(state: ServerState, loader: Callable[[], Services]) -> None:
    try:
        state.services = loader().start(state.config)
        log.info("models loaded; ready")
    except Exception as err:  # noqa: BLE001 - reported by /readyz
        state.load_error = one_line(err)
        log.error("loading the models failed: %s", state.load_error)


def _add_basic_routes(app: FastAPI, state: ServerState) -> None:
    page = resources.files("vlbridge.serve").joinpath("static", "index.html")

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        services = state.ready()
        return {"status": "ready", "models": services.model_ids(),
                "index": None if services.index is None else {"images": len(services.index), "kind": services.index.kind},
                "vqa_template": state.config.vqa_template, "example_shots": len(services.example_shots)}

    @app.get("/v1/models")
    async def models():
        services = state.ready()
        data = [{"id": model_id, "object": "model", "created": int(state.started), "owned_by": "vlbridge", "kind": kind}
                for kind, model_id in services.model_ids().items()]
        return {"object": "list", "data": data}

    @app.get("/", include_in_schema=False)
    async def index_page():
        return FileResponse(str(page), media_type="text/html")


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(UserError)
    async def user_error(request: Request, err: UserError):
        return JSONResponse(error_body(one_line(err, limit=400), "invalid_request_error"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        message = "no such route" if err.status_code == 404 else str(err.detail)
        return JSONResponse(ApiError(err.status_code, f"{message}: {request.method} {request.url.path}").body(),
                            status_code=err.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError):
        return JSONResponse(error_body(one_line(Exception(str(err.errors()[:1]))), "invalid_request_error"), status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(f"internal error: {one_line(err)}", "server_error"), status_code=500)


class Guard:
    """ASGI wrapper: request-size limit (413) and bearer-key check (401) before the app sees a request."""

    def __init__(self, app: FastAPI, config: ServeConfig):
        self.app = app  # the FastAPI app
        self.config = config
        self.state = app.state  # so callers can reach app.state through the wrapper

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        if self.config.api_key and _needs_key(scope["path"]) and not self._authorized(headers):
            return await _reply(send, ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                                               code="invalid_api_key"), {"www-authenticate": "Bearer"})
        limit = self.config.max_request_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return await _reply(send, _too_large(limit))
        return await self.app(scope, _limited(receive, limit), send)

    def _authorized(self, headers: dict[str, str]) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), self.config.api_key.encode())


def _needs_key(path: str) -> bool:
    return path not in OPEN_PATHS and (path.startswith("/v1/") or path == "/openapi.json")


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is larger than the limit of {limit / 2**20:.3g} MiB (--max-request-mb)",
                    code="request_too_large")


def _limited(receive, limit: int):
    """`receive` that raises a 413 ApiError once the body passes `limit` bytes (bodies without Content-Length)."""
    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _too_large(limit)
        return message

    return wrapped


async def _reply(send, err: ApiError, extra_headers: dict[str, str] | None = None) -> None:
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra_headers or {}).items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
