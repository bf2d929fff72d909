"""`StudyConfig`: every knob of `vlbridge study` (presets: `vlbridge.study.presets`).

The study reuses the trainers' own configs (`ClipTrainConfig` for the supervision ladder's
shared recipe, `LimberTrainConfig` for projectors), so a study stage trains exactly what the
matching `vlbridge train ...` command would. Presets (`vlbridge.study.presets`) are partial override trees applied on top of the defaults; a config
file and `key=value` overrides then apply on top of the preset, and the resolved config is
written into results.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field, is_dataclass
from typing import Any, ClassVar

from vlbridge.config import from_dict, merge, parse_overrides, read_mapping, rename_keys, to_dict
from vlbridge.errors import UserError
from vlbridge.study.presets import (  # noqa: F401  (the ladder's names are part of the config's vocabulary)
    DEFAULT_ENCODERS, DEFAULT_TWINS, LADDER, LANGUAGE_SUPERVISION, PRESETS, REFERENCE_ENCODERS, TRAIN_MIX)
from vlbridge.evaluation.vqa import FROZEN_TEMPLATE
from vlbridge.training.clip import ClipTrainConfig
from vlbridge.training.clip_data import ClipDataConfig
from vlbridge.training.limber import LimberTrainConfig

@dataclass
class LadderConfig:
    """One backbone trained four ways on the same images, steps and augmentations (see training/tower.py)."""

    train: ClipTrainConfig = field(default_factory=lambda: ClipTrainConfig(
        data=ClipDataConfig(source=TRAIN_MIX)))  # the shared recipe: CLIP trains it as is, the towers reuse it
    rungs: list[str] = field(default_factory=lambda: list(LADDER))  # which rungs to build
    temperature: float = 0.1  # self-supervised rung: SimCLR temperature


@dataclass
class ScorerConfig:
    """The CLIP that scores generated captions (CLIP-S / RefCLIP-S)."""

    independent: bool = False  # train a separate CLIP (another seed) so the scorer is none of the compared encoders
    seed_offset: int = 1000  # the independent scorer's seed = study seed + this (one scorer for all n_seeds)


@dataclass
class ClipTableConfig:
    """The CLIP table: zero-shot vs linear probes, and robustness under shift."""

    datasets: list[str] = field(default_factory=lambda: ["shapes", "objects?classes=things"])  # first = C1/C2 headline
    shifts: list[str] = field(default_factory=lambda: ["sketch", "noisy", "blur", "invert"])  # shifts of the first dataset
    model: str = "{clip}"  # the CLIP whose zero-shot classifier is evaluated (load_clip spec)
    probe_encoders: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ENCODERS))  # probed features (C2 trend)
    clip_probe: str = "clip"  # the probe_encoders key holding the zero-shot CLIP's own features (C1)
    n_train: int = 1000  # probe training images per dataset (seeded subset)
    n_test: int = 500  # evaluation images per dataset (seeded subset)
    templates: str = "dataset"  # zero-shot templates: dataset (its own set if shipped, else simple) | simple | openai | a file
    probe_c_steps: int = 6  # points of the coarse L2 sweep (ProbeConfig's 1e-6 .. 1e6), then binary search to 1/8 decade
    probe_max_iter: int = 300  # L-BFGS iterations per fit (weakly regularised fits stop here)
    batch_size: int = 64  # images per encoder call


@dataclass
class LimberStudyConfig:
    """The LiMBeR table: one projector per encoder; caption likelihood, captioning and few-shot VQA."""

    encoders: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ENCODERS))  # study key -> encoder spec
    twins: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TWINS))  # trained key -> random-init twin (C3)
    ladder: list[str] = field(default_factory=lambda: list(LADDER))  # keys ordered by language supervision (C4)
    clip_key: str = "clip"  # the caption-supervised key (C4, C5)
    no_language_key: str = "self-supervised"  # the key trained without language (C4)
    train: LimberTrainConfig = field(default_factory=LimberTrainConfig)  # projector training (encoder filled per key)
    ablations: bool = True  # clip_key also: closed form only, and default init + training (NLL only)
    reference_seeds: int = 0  # the first N seeds score every row; later ones only what C3-C5 pool (0: every seed scores all)
    likelihood_set: str = "objects?split=test&n=300"  # held-out images whose reference captions are scored (NLL)
    text_ceiling: bool = True  # also score each caption given another reference caption as text
    caption_sets: dict[str, str] = field(default_factory=lambda: {  # name -> generated-caption set (first = headline)
        "objects": "objects?split=test&n=64"})
    vqa_queries: str = "objects?split=test&n=100"  # images whose questions are asked (data spec for load_vqa)
    vqa_per_type: int = 20  # questions kept per answer type (seeded); 0 = every question
    vqa_support: str = "objects?split=train&n=200"  # where the shots are drawn from
    shots: list[int] = field(default_factory=lambda: [0, 1, 2, 4])  # shot counts
    demo_sets: int = 5  # fixed demonstration lists per shot count (each question uses one)
    vqa_template: str = FROZEN_TEMPLATE  # VQA query text; a shot adds " {answer}\n"
    answer_tokens: int = 5  # open answers: greedy tokens at most (every answer here is 1-3 tokens + newline)
    vqa_truncate_answers: bool = False  # cut open answers to the longest human answer's word count (paper preset)
    clip_scorer: str = "{scorer}"  # CLIP for CLIP-S / RefCLIP-S ({scorer}: see ScorerConfig)
    batch_size: int = 64  # prompts / images run together (each LM call streams all weights: big batches pay it less often)
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
    beit_large: str = ""  # HF BeitModel directory (BEiT-large pt22k, self-supervised)
    beit_large_ft22k: str = ""  # HF directory of BEiT-large pt22k-ft22k (the same, then fine-tuned on 22k labels)
    nf_resnet50: str = ""  # timm nf_resnet50 weights file (ImageNet-supervised)


@dataclass
class StudyConfig:
    """Everything `vlbridge study` runs."""

    RENAMED_KEYS: ClassVar[dict] = {"train_clip": "train_encoders", "clip": "ladder.train"}  # old name -> new name

    preset: str = "default"  # quick | default | paper (recorded in the report)
    seed: int = 0  # seeds every stage
    device: str = "auto"  # "auto" (GPU if available), "cpu", "cuda", ...
    cache_dir: str = ""  # stage cache; "" = <VLBRIDGE_CACHE>/study
    n_seeds: int = 1  # independent repeats (encoders, projectors, shot sampling): seed, seed+1, ...
    workers: int = 1  # stages built side by side in this many forked processes (CPU, one process only; 1: in order, here)
    worker_threads: int = 0  # torch threads per stage process when workers > 1 (0: CPU cores // workers)
    train_encoders: bool = True  # train the supervision ladder (paper preset: pretrained files instead)
    ladder: LadderConfig = field(default_factory=LadderConfig)  # the encoders compared
    scorer: ScorerConfig = field(default_factory=ScorerConfig)  # the CLIP-S / RefCLIP-S scorer
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
    if config.n_seeds < 1:
        raise UserError(f"n_seeds must be at least 1, got {config.n_seeds}")
    if config.workers < 1:
        raise UserError(f"workers must be at least 1 (1: stages in order, in this process), got {config.workers}")
    if config.worker_threads < 0:
        raise UserError(f"worker_threads must be >= 0 (0: CPU cores // workers), got {config.worker_threads}")
    unknown = [r for r in config.ladder.rungs if r not in LADDER]
    if unknown:
        raise UserError(f"ladder.rungs: unknown rung(s) {unknown}; choose from {', '.join(LADDER)}")
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
