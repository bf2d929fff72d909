"""What the server serves: its settings (`ServeConfig`) and the loaded models (`Services`).

`Services` holds a LiMBeR model, a CLIP and a search index (each optional), the micro-batchers
in front of them and one worker thread per model, so concurrent requests share model calls and
no two calls run on one model at the same time. `load_services` loads them from paths with the
Python API (`vlbridge.api`); the server may do that in the background while /readyz says 503.
"""

from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from vlbridge.api import ClipModel, LimberModel, SearchIndex
from vlbridge.errors import UserError
from vlbridge.evaluation.vqa import QUESTION_TEMPLATE, check_template
from vlbridge.serve.batching import MicroBatcher

log = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    """How the server behaves (the `vlbridge serve` options)."""

    api_key: str | None = None  # when set, every route but /healthz and /readyz needs "Authorization: Bearer KEY"
    max_request_bytes: int = 20 * 1024 * 1024  # bodies larger than this get 413 (20 MiB)
    max_images: int = 32  # images in one caption / embeddings request
    max_new_tokens: int = 128  # the most tokens a request may ask to generate
    batch_window_ms: float = 5.0  # how long a lone request waits for others to share its model call
    max_batch: int = 16  # most requests in one model call (1: no micro-batching)
    vqa_template: str = QUESTION_TEMPLATE  # question wording after the image (the demo uses its study's)
    thumbnail_px: int = 256  # longest side of a thumbnail
    search_max_k: int = 100  # the most results one search returns
    threads: int = 0  # torch threads per model worker (0: torch's default; 1 is fastest on a busy shared machine)


@dataclass
class Services:
    """The loaded models (any may be None) plus their batchers and worker threads."""

    limber: LimberModel | None = None  # captions, answers, chat
    clip: ClipModel | None = None  # embeddings, classification, search queries
    index: SearchIndex | None = None  # text / image -> images
    batchers: dict[str, MicroBatcher] = field(default_factory=dict)  # name -> batcher (made by start())
    executors: dict[str, ThreadPoolExecutor] = field(default_factory=dict)  # one thread per model
    embedding_dim: int = 0  # E of the CLIP (set by start())
    example_shots: list[dict] = field(default_factory=list)  # solved {image, question, answer}: VQA "shots": N uses the first N

    def check(self) -> "Services":
        """UserError unless the index (if any) has the CLIP that made it."""
        if self.index is not None:
            if self.clip is None:
                raise UserError("a search index needs the CLIP that built it (--clip)")
            if self.clip.image_encoder.encoder_id != self.index.encoder_id:
                raise UserError(
                    f"the index at {self.index.root} was built with CLIP {self.index.info.get('clip')} "
                    f"({self.index.encoder_id}), not with {self.clip.source} ({self.clip.image_encoder.encoder_id})"
                )
        if self.limber is None and self.clip is None:
            raise UserError("nothing to serve: give a LiMBeR model (--model), a CLIP (--clip) or both")
        return self

    def start(self, config: ServeConfig) -> "Services":
        """Make the worker threads and batchers (idempotent)."""
        if self.batchers:
            return self
        from vlbridge.serve import work

        window, size = config.batch_window_ms / 1000.0, config.max_batch
        worker = _worker_threads(config.threads)
        if self.limber is not None:
            lane = self.executors.setdefault("lm", worker(1, "vlbridge-lm"))
            self.batchers["generate"] = MicroBatcher("generate", work.generate_batch(self.limber), lane, window, size)
        if self.clip is not None:
            self.embedding_dim = int(self.clip.embed_texts(["a"]).shape[1])
            lane = self.executors.setdefault("clip", worker(1, "vlbridge-clip"))
            self.batchers["embed_images"] = MicroBatcher("embed_images", work.embed_images_batch(self.clip), lane, window, size)
            self.batchers["embed_texts"] = MicroBatcher("embed_texts", work.embed_texts_batch(self.clip), lane, window, size)
        self.executors.setdefault("stream", worker(4, "vlbridge-stream"))
        return self

    async def stop(self) -> None:
        for batcher in self.batchers.values():
            await batcher.close()
        for executor in self.executors.values():
            executor.shutdown(wait=False, cancel_futures=True)
        self.batchers, self.executors = {}, {}

    def model_ids(self) -> dict[str, str]:
        """kind -> model id, as /v1/models lists them."""
        ids = {}
        if self.limber is not None:
            ids["limber"] = f"limber:{self.limber.name}"
        if self.clip is not None:
            ids["clip"] = f"clip:{self.clip.name}"
        return ids


def _worker_threads(threads: int):
    """A maker of thread pools whose threads run torch with `threads` intra-op threads (0: leave torch's default)."""
    import torch

    def make(count: int, name: str) -> ThreadPoolExecutor:
        initializer = (lambda: torch.set_num_threads(threads)) if threads > 0 else None
        return ThreadPoolExecutor(count, thread_name_prefix=name, initializer=initializer)

    return make


def load_services(model: str | Path | None = None, clip: str | Path | None = None, index: str | Path | None = None,
                  device: str = "cpu") -> Services:
    """Load what the paths name (a LiMBeR folder, a CLIP, an index folder) and check they fit together."""
    limber = LimberModel.from_pretrained(model, device=device) if model else None
    clip_model = ClipModel.from_pretrained(clip, device=device) if clip else None
    search_index = SearchIndex.open(index) if index else None
    if search_index is not None and clip_model is None:
        clip_model = ClipModel.from_pretrained(search_index.info["clip"], device=device)
    return Services(limber, clip_model, search_index).check()


def with_template(config: ServeConfig, template: str) -> ServeConfig:
    """`config` with another VQA wording (checked)."""
    return dataclasses.replace(config, vqa_template=check_template(template))
