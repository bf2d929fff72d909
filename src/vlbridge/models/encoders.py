"""`ImageEncoder`: one interface over every image encoder LiMBeR and the study use.

An encoder maps preprocessed pixels to features and carries everything a consumer needs to
know about itself, so no code keeps side tables of encoder properties:

    encoder = vlbridge.models.registry.build_encoder("efficientnet-lite0:grid")
    pixels = torch.stack([encoder.preprocess(image) for image in images])  # (B, 3, H, W)
    features = encoder(pixels)  # (B, D) when encoder.pooled, else (B, N, D)

Attributes: `encoder_id` (stable identity: kind, architecture name, mode and a hash of the
architecture + weights, e.g. "timm:resnet10t:grid@3fa2c1d07b9e"), `feature_dim` (D),
`num_tokens` (1 pooled, N = h*w or patches for grid), `pooled`, `preprocess` (PIL RGB ->
(3, H, W) float tensor), `preprocess_id` (identity of the preprocessing for cache keys),
`image_size` ((H, W) the preprocessing produces); encoders built by the registry also carry
`spec`, the string they were built from.

Encoders are frozen by default: parameters do not require grad and the module stays in eval
mode even when a parent calls `.train()` (batch-norm statistics never move). `unfreeze()`
makes it trainable for the "tuned encoder" experiments.

This module holds the base class, the identity helpers (weights fingerprint, preprocessing
id, seeded re-initialisation) and the embedded EfficientNet-Lite0 encoder. CLIP towers live
in `encoders_clip.py`, timm / HF / self-supervised towers in `encoders_timm_hf.py`; the
spec strings are parsed in `vlbridge.models.registry`.
"""

from __future__ import annotations

import hashlib
import re
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from vlbridge.errors import UserError

ID_HASH_CHARS = 12  # hex digits of the architecture+weights hash kept in encoder_id
RANDOM_INIT_SEED = 0  # seed of every "random:<spec>" initialisation
_PROBE_SIZE = (67, 53)  # (W, H) of the synthetic image used to identify a preprocessing


class ImageEncoder(torch.nn.Module):
    """Base class: subclasses set their modules, then call `_finalize()` at the end of __init__."""

    encoder_id: str
    feature_dim: int
    num_tokens: int
    pooled: bool
    preprocess: Callable[[Image.Image], torch.Tensor]
    preprocess_id: str
    image_size: tuple[int, int]

    def __init__(self, name: str, pooled: bool, preprocess: Callable[[Image.Image], torch.Tensor]):
        super().__init__()
        self.name = name  # kind:architecture[:grid], e.g. "timm:resnet10t:grid" (no hash)
        self.pooled = pooled
        self.preprocess = preprocess
        self.frozen = True

    # ----------------------------------------------------------------------------- subclass API
    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D) pooled or (B, N, D) grid. Implemented by subclasses."""
        raise NotImplementedError

    def fingerprint_modules(self) -> list[torch.nn.Module]:
        """Modules whose architecture and weights define the features (default: all children)."""
        return list(self.children())

    # ------------------------------------------------------------------------------- public API
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"{self.name} expects pixel values of shape (B, 3, H, W), got {tuple(pixel_values.shape)}")
        return self.encode(pixel_values)

    @property
    def device(self) -> torch.device:
        first = next(self.parameters(), None)
        return first.device if first is not None else torch.device("cpu")

    def freeze(self) -> "ImageEncoder":
        """No parameter requires grad; eval mode from now on, whatever `.train()` is called with."""
        for param in self.parameters():
            param.requires_grad_(False)
        self.frozen = True
        return self.eval()

    def unfreeze(self) -> "ImageEncoder":
        """Make every parameter trainable and let `.train()` switch modes again (tuned encoders)."""
        for param in self.parameters():
            param.requires_grad_(True)
        self.frozen = False
        return self

    def train(self, mode: bool = True) -> "ImageEncoder":
        return super().train(mode and not getattr(self, "frozen", False))

    def extra_repr(self) -> str:
        return f"encoder_id={getattr(self, 'encoder_id', '?')!r}, preprocess_id={getattr(self, 'preprocess_id', '?')!r}"

    def _finalize(self) -> None:
        """Freeze, identify the preprocessing, probe the output shape and hash the weights."""
        self.freeze()
        sample, self.preprocess_id = preprocess_identity(self.preprocess)
        self.image_size = (int(sample.shape[1]), int(sample.shape[2]))
        with torch.no_grad():
            out = self.forward(sample.unsqueeze(0).to(self.device))
        expected_ndim = 2 if self.pooled else 3
        if out.ndim != expected_ndim:
            raise RuntimeError(f"{self.name} should give {expected_ndim}-d features, got shape {tuple(out.shape)}")
        self.feature_dim = int(out.shape[-1])
        self.num_tokens = 1 if self.pooled else int(out.shape[1])
        digest = module_fingerprint(self.fingerprint_modules())
        self.encoder_id = f"{self.name}@{digest[:ID_HASH_CHARS]}"


# ---------------------------------------------------------------------------------- identities
def module_fingerprint(modules: list[torch.nn.Module]) -> str:
    """sha256 over each module's architecture (its repr: layers, sizes, activations) and state.

    Every parameter and buffer (e.g. batch-norm statistics) enters with its name, dtype and
    shape, so a changed checkpoint or a changed activation changes the fingerprint.
    """
    digest = hashlib.sha256()
    for module in modules:
        digest.update(_strip_addresses(repr(module)).encode())
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            raw = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
            digest.update(raw.numpy())
    return digest.hexdigest()


def _strip_addresses(text: str) -> str:
    """Drop memory addresses (" at 0x7f..") so reprs of functions are stable across processes."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", text)


def probe_image() -> Image.Image:
    """A fixed, textured, non-square RGB image: any change of resize, crop or normalisation shows."""
    width, height = _PROBE_SIZE
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([(x * 7 + y * 3) % 256, (x * x + y * 11) % 256, (x * y + 5 * y) % 256], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8), mode="RGB")


def preprocess_identity(preprocess: Callable[[Image.Image], torch.Tensor]) -> tuple[torch.Tensor, str]:
    """(preprocessed probe image, id). The id hashes the transform's repr and its output on the probe.

    Returns e.g. "224x224-5be0c1a9e2f3": output size plus a hash, so two preprocessings that
    differ in size, crop, interpolation or mean/std never share cache entries.
    """
    sample = preprocess(probe_image())
    if not isinstance(sample, torch.Tensor) or sample.ndim != 3 or sample.shape[0] != 3:
        got = tuple(sample.shape) if isinstance(sample, torch.Tensor) else type(sample).__name__
        raise ValueError(f"preprocess must turn a PIL image into a (3, H, W) tensor, got {got}")
    sample = sample.float()
    digest = hashlib.sha256(_strip_addresses(repr(preprocess)).encode())
    digest.update(sample.contiguous().numpy().tobytes())
    return sample, f"{sample.shape[1]}x{sample.shape[2]}-{digest.hexdigest()[:ID_HASH_CHARS]}"


def reinitialize_(module: torch.nn.Module, seed: int = RANDOM_INIT_SEED) -> torch.nn.Module:
    """Randomly re-initialise every parameter and buffer of `module` in place, deterministically.

    Used for "random:clip:..." where only a loaded model gives the architecture. Layers with
    their own `reset_parameters` (Linear, Conv, norms incl. running stats) or
    `_reset_parameters` (nn.MultiheadAttention) use it; parameters owned directly by other
    modules (CLIP's class / positional embeddings, projections) get N(0, width^-0.5), the
    scale open_clip uses for them; modules with open_clip's `init_parameters` then apply it.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.no_grad():
            for sub in module.modules():
                reset = getattr(sub, "reset_parameters", None) or getattr(sub, "_reset_parameters", None)
                if callable(reset):
                    reset()
                    continue
                for param in sub.parameters(recurse=False):
                    torch.nn.init.normal_(param, std=param.shape[-1] ** -0.5 if param.ndim else 1.0)
            for sub in module.modules():
                init = getattr(sub, "init_parameters", None)
                if callable(init):
                    init()
    return module


def tokens_from_map(feature_map: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """(B, C, h, w) (or (B, h, w, C) when channels_last) -> (B, h*w, C), row-major over the grid."""
    if channels_last:
        return feature_map.flatten(1, 2)  # (B, h*w, C)
    return feature_map.flatten(2).transpose(1, 2)  # (B, h*w, C)


def eval_transform(size: int, mean, std, interpolation=T.InterpolationMode.BICUBIC) -> T.Compose:
    """Resize the shorter side to `size`, centre-crop `size` x `size`, to tensor, normalise."""
    return T.Compose(
        [
            T.Resize(size, interpolation=interpolation, antialias=True),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(mean=tuple(mean), std=tuple(std)),
        ]
    )


# --------------------------------------------------------------------------- EfficientNet-Lite0
class EfficientNetLiteEncoder(ImageEncoder):
    """EfficientNet-Lite0 (ImageNet-supervised, the embedded "supervised" encoder).

    Features are the final 1280-channel map of `extract_features` (after the head conv + BN +
    ReLU6): pooled = its global average (exactly what the classifier sees, minus dropout),
    grid = its h*w positions (7x7 at 224 px, 4x4 at 128 px).

    Preprocessing: bicubic resize of the shorter side to `image_size`, centre crop of the full
    side (no 87.5% crop: shapes-world objects sit near the image edges), and the TF-Lite
    normalisation (x - 127) / 128 (mean 0.498, std 0.502). Default 224 px, the net's native
    size; any multiple of 32 gives identical "same" padding to the 224 px net (every strided
    layer sees an even size), so smaller inputs such as 128 px ("efficientnet-lite0:128px",
    about 3x faster on CPU) use the same network exactly.
    """

    def __init__(self, net: torch.nn.Module, grid: bool = False, image_size: int = 224, name_prefix: str = ""):
        from vlbridge import assets

        if image_size % 32 or image_size < 32:
            raise UserError(f"efficientnet-lite0 needs an input size that is a multiple of 32, got {image_size}px")
        preprocess = eval_transform(image_size, assets.EFFICIENTNET_LITE0_MEAN, assets.EFFICIENTNET_LITE0_STD)
        name = f"{name_prefix}efficientnet-lite0" + (":grid" if grid else "")
        super().__init__(name, pooled=not grid, preprocess=preprocess)
        self.net = net
        self._finalize()

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        feature_map = self.net.extract_features(pixel_values)  # (B, 1280, h, w)
        if self.pooled:
            return feature_map.mean(dim=(2, 3))  # (B, 1280)
        return tokens_from_map(feature_map)  # (B, h*w, 1280)


def build_efficientnet_lite0(grid: bool = False, image_size: int = 224, random_init: bool = False) -> EfficientNetLiteEncoder:
    """The embedded EfficientNet-Lite0 (real ImageNet weights) or, with random_init, the same net seeded."""
    if random_init:
        from efficientnet_lite_pytorch import EfficientNet

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            net = EfficientNet.from_name("efficientnet-lite0")
        return EfficientNetLiteEncoder(net, grid=grid, image_size=image_size, name_prefix="random:")
    from vlbridge import assets

    return EfficientNetLiteEncoder(assets.load_efficientnet_lite0(), grid=grid, image_size=image_size)
