"""Helpers for the CLIP-evaluation tests (tests/test_eval_*.py): a tiny random open_clip CLIP.

`tiny_clip_bundle()` builds a 1-layer ViT / 1-layer text-transformer open_clip CLIP
(32 px images, 16-d embeddings) wrapped in a ClipBundle with open_clip's eval transform and
BPE tokenizer. `save_tiny_run(dir)` writes the same model as a vlbridge CLIP run directory,
which the CLI tests load back through the real `vlbridge.models.clip_loading.load_clip`.
`legacy_embed_records(bundle, records)` is the pixel loop `vlbridge eval` ran before its features
went through the FeatureStore, kept as the reference they must equal bit for bit.
`single_thread` (autouse once imported into a test module) keeps OpenMP and BLAS on one thread
(the test machine's 2 cores are shared; OpenMP/OpenBLAS spinning under contention makes tiny ops
~50x slower); tests/conftest.py already keeps torch on one thread.
"""

from __future__ import annotations

import pytest
import torch

import torch.nn.functional as F

from vlbridge.data.records import BadImage, open_image, to_rgb
from vlbridge.models.bundle import ClipBundle

IMAGE_SIZE = 32  # input side of the tiny ViT
CONTEXT_LENGTH = 16  # text tokens of the tiny text tower
EMBED_DIM = 16  # joint embedding size
TINY_MODEL_CFG = {  # an open_clip model config (the dict open_clip's JSON configs hold)
    "embed_dim": EMBED_DIM,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": CONTEXT_LENGTH, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def tiny_clip_model(seed: int = 0) -> torch.nn.Module:
    """A randomly initialised tiny open_clip CLIP (deterministic for `seed`)."""
    import open_clip

    torch.manual_seed(seed)
    return open_clip.model.CLIP(**TINY_MODEL_CFG).eval()


def bundle_for(model: torch.nn.Module, name: str = "tiny-clip", device: str = "cpu") -> ClipBundle:
    import open_clip

    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=CONTEXT_LENGTH)
    preprocess = open_clip.image_transform(IMAGE_SIZE, is_train=False)
    return ClipBundle(model.to(device), preprocess, tokenizer, name, torch.device(device))


def tiny_clip_bundle(seed: int = 0) -> ClipBundle:
    return bundle_for(tiny_clip_model(seed))


def save_tiny_run(run_dir, seed: int = 0):
    """A vlbridge CLIP run dir (open_clip_config.json + model.safetensors) that load_clip reads."""
    from vlbridge.models.clip import save_openclip_run

    save_openclip_run(tiny_clip_model(seed), TINY_MODEL_CFG, run_dir)
    return run_dir


@pytest.fixture(autouse=True)
def single_thread():
    """OpenMP and BLAS (numpy/scipy/sklearn) on one thread for the test, restored after.

    torch's own thread count is conftest.py's business; this adds the BLAS limit the probe tests need.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@torch.no_grad()
def legacy_embed_records(bundle: ClipBundle, records, batch_size: int = 64) -> tuple[torch.Tensor, list[int]]:
    """((K, E) unit image embeddings, kept positions): the former evaluation.features_io.embed_records
    with the former ClipBundle.embed_images inlined (open, skip, encode_image per window of records)."""
    chunks, kept = [], []
    bundle.model.eval()
    for start in range(0, len(records), batch_size):
        images = []
        for offset, record in enumerate(records[start : start + batch_size]):
            try:
                images.append(open_image(record.image))
            except BadImage:
                continue
            kept.append(start + offset)
        if images:
            batch = torch.stack([bundle.preprocess(to_rgb(image)) for image in images])
            chunks.append(F.normalize(bundle.model.encode_image(batch.to(bundle.device)).float().cpu(), dim=-1))
    return torch.cat(chunks), kept
