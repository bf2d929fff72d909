"""Shared test helpers, imported as `helpers.<module>` (pytest puts tests/ on sys.path: rootdir-less
`prepend` import mode, tests/ has no __init__.py).

- `tiny_lm`: tiny random causal LMs of several architectures and the one tiny byte-level BPE tokenizer builder (`train_tokenizer`).
- `clip_fixtures`: tiny CLIP / BERT / HF-CLIP models on disk, micro CLIP-training configs, forked gloo workers.
- `eval_helpers`: a tiny open_clip CLIP (bundle or run dir) and the `single_thread` BLAS-limit fixture.
- `formats_helpers`: shapes-world records laid out by hand in each dataset format.
- `limber_train_helpers`: tiny Llama + timm encoder for the LiMBeR training tests, the DDP worker.
- `serve_helpers`: tiny CLIP + LiMBeR, images and a uvicorn thread for the API / index / server tests.
- `free_port()` (here): a free loopback TCP port for gloo rendezvous or a test server.

One thread per test comes from tests/conftest.py's autouse fixtures, not from these modules.
"""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
