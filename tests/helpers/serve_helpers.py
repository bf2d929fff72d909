"""Tiny on-disk models, images and a search index for the API, index and server tests.

Everything is random-weight and saved in the real formats, then read back through the real
loaders, so the server starts in seconds without the study:
- `make_models(root)`: a tiny open_clip CLIP run (helpers.eval_helpers.save_tiny_run) and a LiMBeR
  checkpoint whose encoder is that CLIP ("clip:RUN") and whose LM is a 2-layer GPT-2
  (helpers.tiny_lm.save_tiny_lm, GPT-2 with peaky random weights); the projector is scaled up so different images
  give different captions.
- `write_images(folder, n)`: shapes-world PNGs with same-stem .txt captions (a `folder:` spec).
- `png_bytes(seed)`: one encoded shapes-world image.
- `ServerThread`: the real uvicorn server on a free loopback port, in a thread.
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from helpers import free_port
from helpers.eval_helpers import save_tiny_run
from helpers.tiny_lm import save_tiny_lm


@dataclass
class TinyModels:
    """Paths of the tiny models written by make_models."""

    clip: Path  # vlbridge CLIP run dir
    limber: Path  # LiMBeR checkpoint folder (limber.yaml + projector.safetensors)
    lm: Path  # the tiny LM folder


def make_models(root: Path, seed: int = 0) -> TinyModels:
    from vlbridge.models.limber import Limber, LimberConfig

    root = Path(root)
    clip_dir = save_tiny_run(root / "clip", seed=seed)
    lm_dir = save_tiny_lm(root / "lm", "gpt2", seed=seed)
    config = LimberConfig(encoder=f"clip:{clip_dir}", lm=str(lm_dir), num_prefix_tokens=2, prompt="A picture of")
    torch.manual_seed(seed)
    model = Limber.build(config)
    spread_projector(model)
    limber_dir = model.save(root / "limber")
    return TinyModels(clip=Path(clip_dir), limber=Path(limber_dir), lm=Path(lm_dir))


def spread_projector(model, gain: float = 3.0) -> None:
    """Make the random projector tell images apart: centre the tiny CLIP's (nearly parallel) features
    on their mean over a few shapes-world images and scale their spread to `gain` x the LM's embeddings."""
    from vlbridge.data.shapes import image_text_records

    images = [record.image for record in image_text_records(16, split="train", seed=99, image_size=48)]
    with torch.no_grad():
        features = model.encode(torch.stack([model.encoder.preprocess(image) for image in images]))  # (16, D)
        centred = features - features.mean(dim=0)
        weight = torch.randn_like(model.projector.proj.weight)  # (k*H, D)
        spread = (centred @ weight.T).std()
        token_scale = model.lm.embed(torch.arange(8)).std()
        weight *= gain * token_scale / spread
        model.projector.proj.weight.copy_(weight)
        model.projector.proj.bias.copy_(-(weight @ features.mean(dim=0)))


def write_images(folder: Path, n: int, seed: int = 0, split: str = "test", image_size: int = 48) -> Path:
    """n shapes-world images as folder/<id>.png + folder/<id>.txt (first caption)."""
    from vlbridge.data.shapes import image_text_records

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for record in image_text_records(n, split=split, seed=seed, image_size=image_size):
        record.image.save(folder / f"{record.id}.png")
        (folder / f"{record.id}.txt").write_text(record.captions[0] + "\n", encoding="utf-8")
    return folder


def png_bytes(seed: int = 0, image_size: int = 48) -> bytes:
    from vlbridge.data.shapes import image_text_records

    record = image_text_records(1, split="test", seed=seed + 1000, image_size=image_size)[0]
    buffer = io.BytesIO()
    record.image.save(buffer, format="PNG")
    return buffer.getvalue()


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1:<free port> in a daemon thread; stop() shuts it down."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, timeout: float = 60.0) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
