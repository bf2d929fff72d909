"""`vlbridge serve`: serve trained models over HTTP (FastAPI + uvicorn) with a web page at /.

    vlbridge serve --demo                                  # the newest `make demo` study run + embedded-data index
    vlbridge serve --model runs/limber --clip runs/clip --index runs/index --port 8000
    vlbridge serve --clip runs/clip --index runs/index --api-key "$KEY"

The server answers at once; models load in the background (GET /readyz says 503 until they
are in). Routes: docs/ and `vlbridge.serve` (OpenAI-compatible /v1/chat/completions and
/v1/embeddings, /v1/caption, /v1/vqa, /v1/classify, /v1/search, /v1/images/{id}).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from vlbridge.errors import UserError

GROUP = None
log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve LiMBeR / CLIP / a search index over HTTP, with a web page",
        description=(
            "Serve a LiMBeR model (captions, answers, OpenAI chat completions), a CLIP (embeddings, zero-shot "
            "classification) and a search index (text or image -> images) over HTTP, with a page at /. "
            "--demo serves the newest finished study run (`make demo`) and an index over the embedded data."
        ),
        epilog="Example: vlbridge serve --demo   (then open http://127.0.0.1:8000)",
    )
    what = parser.add_argument_group("what to serve")
    what.add_argument("--model", metavar="LIMBER_RUN", help="LiMBeR model: a `train limber` run dir or projector folder")
    what.add_argument("--clip", metavar="CLIP_RUN", help="CLIP: a `train clip` run dir or any file `load_clip` reads")
    what.add_argument("--index", metavar="DIR", help="search index from `vlbridge index build` (its CLIP is loaded if --clip is not given)")
    what.add_argument("--demo", action="store_true", help="the newest study run's 'clip' projector and CLIP, plus an embedded-data index")
    what.add_argument("--preset", default="default", help="with --demo: the study preset whose newest run to serve (default: default)")
    what.add_argument("--cache", metavar="DIR", help="with --demo: the study cache (default: <VLBRIDGE_CACHE>/study)")
    what.add_argument("--device", default="cpu", help="cpu, cuda, auto, ... (default cpu)")
    net = parser.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    net.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    net.add_argument("--api-key", default=os.environ.get("VLBRIDGE_API_KEY"), metavar="KEY",
                     help="require 'Authorization: Bearer KEY' on every route but /healthz and /readyz "
                          "(default: $VLBRIDGE_API_KEY, else no key)")
    limits = parser.add_argument_group("limits and batching")
    limits.add_argument("--max-request-mb", type=float, default=20.0, help="larger request bodies get 413 (default 20)")
    limits.add_argument("--batch-window-ms", type=float, default=5.0, help="how long a lone request waits to share a model call (default 5)")
    limits.add_argument("--max-batch", type=int, default=16, help="most requests in one model call; 1 turns batching off (default 16)")
    limits.add_argument("--threads", type=int, default=0,
                        help="torch threads per model (default: torch's, one per core; 1 is fastest on a busy shared machine)")
    limits.add_argument("--vqa-template", default=None, metavar="TEXT",
                        help="question wording with one {question} (default 'Q: {question} A:'; --demo: the study's)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from vlbridge.serve import ServeConfig, create_app
    from vlbridge.serve.services import with_template

    if args.max_batch < 1 or args.batch_window_ms < 0 or args.max_request_mb <= 0 or args.threads < 0:
        raise UserError("--max-batch must be >= 1, --batch-window-ms >= 0, --max-request-mb > 0 and --threads >= 0")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # model loading; each model's worker thread sets it again
    config = ServeConfig(api_key=args.api_key or None, max_request_bytes=int(args.max_request_mb * 2**20),
                         batch_window_ms=args.batch_window_ms, max_batch=args.max_batch, threads=args.threads)
    loader, template = _loader(args)
    config = with_template(config, args.vqa_template or template or config.vqa_template)
    app = create_app(loader, config)
    where = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"
    print(f"vlbridge: serving on {where} (open it in a browser; the models load in the background, "
          f"GET /readyz says when they are ready){' - API key required' if config.api_key else ''}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if args.quiet else "info",
                timeout_graceful_shutdown=5)
    return 0


def _loader(args: argparse.Namespace):
    """(function that loads the services, the demo's VQA wording or None); paths are checked here, at once."""
    from vlbridge.runtime import resolve_device

    device = str(resolve_device(args.device))
    if args.demo:
        if args.model or args.clip or args.index:
            raise UserError("--demo serves the study's models; leave out --model, --clip and --index (or drop --demo)")
        from vlbridge.serve.demo import demo_paths, load_demo_services

        paths = demo_paths(args.preset, args.cache)
        return (lambda: load_demo_services(paths, device)), paths.vqa_template
    if not (args.model or args.clip or args.index):
        raise UserError("nothing to serve: give --model LIMBER_RUN, --clip CLIP_RUN and/or --index DIR, or --demo")
    _check_paths(args)
    from vlbridge.serve.services import load_services

    return (lambda: load_services(args.model, args.clip, args.index, device)), None


def _check_paths(args: argparse.Namespace) -> None:
    from vlbridge.api.models import is_limber_dir
    from vlbridge.api.search_index import read_info

    if args.model and not is_limber_dir(args.model):
        raise UserError(f"--model {args.model} is not a LiMBeR model (expected a folder with limber.yaml or model/limber.yaml)")
    if args.clip and not Path(args.clip).exists():
        raise UserError(f"--clip {args.clip} does not exist")
    if args.index and read_info(args.index) is None:
        raise UserError(f"--index {args.index} is not a search index (no index.json); build one with `vlbridge index build`")
