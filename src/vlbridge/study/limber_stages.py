"""Study stages on the LiMBeR side: one projector per encoder, then captioning and few-shot VQA.

For every encoder key of `config.limber.encoders` (clip, supervised, self-supervised,
random-clip, random-supervised by default) the study trains one linear projector into the
frozen LM on shapes-world captions, then captions held-out shapes-world images (scored by
NoCaps-style domain) and held-out Twemoji, and answers shapes-world questions at 0/1/2/4
shots. The blind baseline asks the same prompts with no image tokens. Image features come
from the FeatureStore, so each image is encoded once per encoder across all stages and runs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from vlbridge.data import datasets
from vlbridge.data.features import FeatureStore
from vlbridge.errors import AssetMissingError
from vlbridge.study.config import StudyConfig
from vlbridge.runtime import resolve_device
from vlbridge.models.limber import load_trained_limber
from vlbridge.training.limber import train_limber

log = logging.getLogger(__name__)


def fill_spec(template: str, config: StudyConfig, clip_dir: Path | None, ssl_dir: Path | None) -> str:
    """Fill {clip}, {ssl} (the study's trained runs) and {paper.FIELD} (local paths) in a spec."""
    filled = template.replace("{clip}", str(clip_dir)).replace("{ssl}", str(ssl_dir))
    for name, value in vars(config.paper).items():
        filled = filled.replace("{paper." + name + "}", str(value))
    return filled


def build_projector(config: StudyConfig, spec: str, store: FeatureStore, folder: Path) -> None:
    """Train one projector for encoder `spec`; losses go to losses.json for the report."""
    train = config.limber.train
    data = replace(train.data, feature_cache=str(store.root), dataset=fill_spec(train.data.dataset, config, None, None))
    train_config = replace(train, encoder=spec, seed=config.seed, device=config.device, data=data,
                           lm=fill_spec(train.lm, config, None, None))
    result = train_limber(train_config, folder)
    summary = {"steps": result.steps, "final_loss": result.final_loss, "samples_per_second": result.samples_per_second,
               "losses": result.losses}
    (folder / "losses.json").write_text(json.dumps(summary))


def caption_records(config: StudyConfig) -> dict[str, list]:
    """Held-out captioning sets by name (an embedded set whose asset is missing is skipped)."""
    sets = {}
    for name, spec in config.limber.caption_sets.items():
        try:
            sets[name] = list(datasets.load_dataset(fill_spec(spec, config, None, None), "image_text").records)
        except AssetMissingError as err:
            log.warning("captioning set %s skipped: %s", name, err)
    return sets


def vqa_sets(config: StudyConfig) -> tuple[list, list]:
    """(queries, support): the questions asked (seeded subset) and the pool shots come from."""
    queries = datasets.load_dataset(fill_spec(config.limber.vqa_queries, config, None, None), "vqa").records
    if len(queries) > config.limber.vqa_max_questions:
        keep = np.random.default_rng(config.seed).permutation(len(queries))[: config.limber.vqa_max_questions]
        queries = [queries[i] for i in sorted(keep)]
    support = datasets.load_dataset(fill_spec(config.limber.vqa_support, config, None, None), "vqa").records
    return queries, support


def build_limber_eval(config: StudyConfig, projector_dir: Path, store: FeatureStore, clip_scorer, folder: Path) -> None:
    """Captioning (shapes by domain, Twemoji) and VQA at each shot count -> eval.json."""
    from vlbridge.evaluation.captioning import CaptionEvalConfig, evaluate_captioning
    from vlbridge.evaluation.vqa import VQAEvalConfig, evaluate_vqa

    model = load_trained_limber(projector_dir, device=resolve_device(config.device))
    caption_config = CaptionEvalConfig(batch_size=config.limber.batch_size)
    result: dict = {"captioning": {}}
    for name, records in caption_records(config).items():
        spec = config.limber.caption_sets[name]
        features = store.get_or_extract(model.encoder, fill_spec(spec, config, None, None), "eval", records)
        result["captioning"][name] = evaluate_captioning(model, records, caption_config, features=features,
                                                         clip_scorer=clip_scorer)
    queries, support = vqa_sets(config)
    name = fill_spec(f"{config.limber.vqa_queries}+{config.limber.vqa_support}", config, None, None)
    features = store.get_or_extract(model.encoder, name, "vqa", list(queries) + list(support))  # keyed by image id
    vqa_config = VQAEvalConfig(shots=tuple(config.limber.shots), seed=config.seed, batch_size=config.limber.batch_size,
                               template=config.limber.vqa_template)
    result["vqa"] = evaluate_vqa(model, queries, support, vqa_config, features=features)
    (folder / "eval.json").write_text(json.dumps(result, indent=2))


def build_blind(config: StudyConfig, projector_dir: Path, folder: Path) -> None:
    """The blind baseline: the same few-shot prompts with every image segment removed."""
    from vlbridge.evaluation.vqa import VQAEvalConfig, evaluate_vqa

    model = load_trained_limber(projector_dir, device=resolve_device(config.device))
    queries, support = vqa_sets(config)
    vqa_config = VQAEvalConfig(shots=tuple(config.limber.shots), seed=config.seed, blind=True,
                               batch_size=config.limber.batch_size, template=config.limber.vqa_template)
    result = evaluate_vqa(model, queries, support, vqa_config)
    (folder / "eval.json").write_text(json.dumps({"vqa": result}, indent=2))
