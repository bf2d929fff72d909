"""`vlbridge serve`: trained models as an HTTP service (FastAPI + uvicorn) and a web page.

    app.py        create_app: guards (size limit, API key), OpenAI-shaped errors, health, models, the page
    routes.py     caption, VQA, classify, embeddings, search, index images and thumbnails
    chat.py       /v1/chat/completions (OpenAI vision shape, streamed as server-sent events by
                  vlbridge.models.generation_stream)
    services.py   ServeConfig and Services: the loaded models, their batchers and worker threads
    batching.py   MicroBatcher: concurrent requests share one model call
    work.py       the batched model calls
    inputs.py     request bodies, images from data URLs / base64 / multipart, ApiError
    demo.py       --demo: the latest study's models and an index over the embedded data
    static/       the page: index.html, app.js, style.css (no external requests)

The surface layer: it uses the Python API (`vlbridge.api`) and never the other way round.
"""

from vlbridge.serve.app import create_app
from vlbridge.serve.services import ServeConfig, Services, load_services

__all__ = ["ServeConfig", "Services", "create_app", "load_services"]
