"""`StudyConfig`: every knob of `vlbridge study`, and the presets (quick / default / paper).

The study reuses the trainers' own configs (`ClipTrainConfig`, `SSLTrainConfig`,
`LimberTrainConfig`), so a study stage trains exactly what the matching `vlbridge train ...`
command would. Presets (`vlbridge.study.presets`) are partial override trees applied on top of the defaults; a config
file and `key=value` overrides then apply on top of the preset, and the resolved config is
written into results.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field, is_dataclass
from typing import Any

from vlbridge.config import from_dict, merge, parse_overrides, read_mapping, rename_keys, to_dict
from vlbridge.errors import UserError
from vlbridge.study.presets import PRESETS
from vlbridge.evaluation.vqa import QUESTION_TEMPLATE
from vlbridge.training.clip import ClipTrainConfig
from vlbridge.training.limber import LimberTrainConfig
from vlbridge.training.ssl import SSLTrainConfig

DEFAULT_ENCODERS = {  # study key -> encoder spec; {clip} / {ssl} are filled with the trained runs
    "clip": "clip:{clip}",
    "supervised": "efficientnet-lite0:128px",  # 128 px: the embedded images are 28-64 px; 3x cheaper than 224
    "self-supervised": "ssl:{ssl}",
    "random-clip": "random:clip:{clip}",
    "random-supervised": "random:efficientnet-lite0:128px",
}


@dataclass
class ClipTableConfig:
    """The CLIP table: zero-shot vs linear probes, and robustness under shift."""

    datasets: list[str] = field(default_factory=lambda: ["shapes", "fashion-mnist", "animal-silhouettes", "openclipart"])  # evaluated datasets
    shifts: list[str] = field(default_factory=lambda: ["sketch", "noisy", "blur", "invert"])  # shapes-world shifts
    model: str = "{clip}"  # the CLIP whose zero-shot classifier is evaluated (load_clip spec)
    probe_encoders: dict[str, str] = field(default_factory=lambda: {  # name -> encoder spec of probed features
        "clip": "clip:{clip}", "supervised": "efficientnet-lite0:128px"})
    n_train: int = 1000  # probe training images per dataset (seeded subset)
    n_test: int = 500  # evaluation images per dataset (seeded subset)
    templates: str = "dataset"  # zero-shot templates: dataset (its own set if shipped, else simple) | simple | openai | a file
    probe_c_steps: int = 6  # points of the coarse L2 sweep (ProbeConfig's 1e-6 .. 1e6), then binary search to 1/8 decade
    probe_max_iter: int = 300  # L-BFGS iterations per fit (weakly regularised fits stop here)
    batch_size: int = 64  # images per encoder call


@dataclass
class LimberStudyConfig:
    """The LiMBeR table: one projector per encoder, captioning and few-shot VQA."""

    encoders: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ENCODERS))  # study key -> encoder spec
    train: LimberTrainConfig = field(default_factory=LimberTrainConfig)  # projector training (encoder filled per key)
    caption_sets: dict[str, str] = field(default_factory=lambda: {  # name -> held-out data spec (first = headline)
        "shapes": "shapes?split=test&n=150", "twemoji": "twemoji?split=test&first=100"})
    vqa_queries: str = "shapes?split=test&n=40"  # VQA questions asked (data spec for load_vqa)
    vqa_max_questions: int = 120  # cap on questions (seeded subset)
    vqa_support: str = "shapes?split=train&n=200"  # where the shots are drawn from
    shots: list[int] = field(default_factory=lambda: [0, 1, 2, 4])  # shot counts
    vqa_template: str = QUESTION_TEMPLATE  # VQA query text; a shot adds " {answer}\n" (LiMBeR's wording)
    clip_scorer: str = "{clip}"  # CLIP for CLIP-S / RefCLIP-S (load_clip spec; {clip} = the trained CLIP)
    batch_size: int = 32  # prompts / images generated together
    sample_images: int = 8  # images in the report's caption grid


@dataclass
class PaperPaths:
    """Local paths for `--preset paper` (real-scale data and weights; nothing is downloaded)."""

    cc3m_shards: str = ""  # webdataset pattern, e.g. /data/cc3m/{00000..00331}.tar
    coco_annotations: str = ""  # captions_val2014.json (COCO format)
    coco_karpathy: str = ""  # dataset_coco.json (Karpathy splits)
    coco_images: str = ""  # folder holding COCO val2014 images
    nocaps_json: str = ""  # nocaps_val_4500_captions.json
    nocaps_images: str = ""  # folder holding the NoCaps validation images
    vqav2_questions: str = ""  # v2_OpenEnded_mscoco_val2014_questions.json
    vqav2_annotations: str = ""  # v2_mscoco_val2014_annotations.json
    vqav2_images: str = ""  # COCO val2014 images for VQAv2
    lm: str = ""  # GPT-J 6B HF directory
    clip_rn50x16: str = ""  # OpenAI RN50x16 checkpoint file (grid features)
    clip_scorer: str = ""  # OpenAI ViT-B/32 checkpoint for CLIP-S / RefCLIP-S
    beit_large: str = ""  # HF BeitModel directory (BEiT-large, self-supervised)
    nf_resnet50: str = ""  # timm nf_resnet50 weights file (ImageNet-supervised)


@dataclass
class StudyConfig:
    """Everything `vlbridge study` runs."""

    preset: str = "default"  # quick | default | paper (recorded in the report)
    seed: int = 0  # seeds every stage
    device: str = "auto"  # "auto" (GPU if available), "cpu", "cuda", ...
    cache_dir: str = ""  # stage cache; "" = <VLBRIDGE_CACHE>/study
    train_clip: bool = True  # train a CLIP on the embedded data (paper preset: use pretrained files)
    train_ssl: bool = True  # train the self-supervised encoder (paper preset: BEiT weights from disk)
    clip: ClipTrainConfig = field(default_factory=ClipTrainConfig)  # the CLIP trained on the embedded data
    ssl: SSLTrainConfig = field(default_factory=SSLTrainConfig)  # the self-supervised encoder
    clip_table: ClipTableConfig = field(default_factory=ClipTableConfig)  # zero-shot / probe / robustness
    limber: LimberStudyConfig = field(default_factory=LimberStudyConfig)  # projectors, captioning, VQA
    paper: PaperPaths = field(default_factory=PaperPaths)  # only read by the paper preset


def preset_tree(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose {', '.join(PRESETS)}")
    return PRESETS[name]


def load_study_config(preset: str = "default", path: str | None = None, overrides: list[str] | None = None) -> StudyConfig:
    """Defaults, then the preset, then a config file, then key=value overrides."""
    config = apply_preset(StudyConfig(), {**preset_tree(preset), "preset": preset})
    if path:
        config = merge(config, read_mapping(path))
    config = merge(config, parse_overrides(overrides))
    for key, spec in config.limber.encoders.items():
        if not isinstance(spec, str) or not spec:
            raise UserError(f"limber.encoders.{key} must be an encoder spec string, got {spec!r}")
    return config


def apply_preset(config: StudyConfig, tree: dict[str, Any]) -> StudyConfig:
    """`merge`, except that a mapping field the preset sets (encoders, caption_sets, ...) is replaced whole.

    (A deep merge would keep the default's other keys: the paper preset's caption sets would
    come after the default "shapes" and "twemoji" sets.)
    """
    data = to_dict(config)
    _replace_mappings(data, rename_keys(type(config), tree), config)
    return from_dict(StudyConfig, data)


def _replace_mappings(data: dict[str, Any], tree: dict[str, Any], node: Any) -> None:
    for key, value in tree.items():
        child = getattr(node, key, None)
        if isinstance(value, dict) and is_dataclass(child):
            _replace_mappings(data[key], value, child)
        else:
            data[key] = value


def config_from_dict(data: dict[str, Any]) -> StudyConfig:
    return from_dict(StudyConfig, data)
