"""Study stages on the LiMBeR side: projectors, then what each one lets the frozen LM do.

Per encoder key and seed:
    build_projector   a linear projector trained through the frozen LM (losses.json, init.json);
                      `variant` "closed-form" saves the closed-form start untrained and "plain"
                      trains from nn.Linear's init (the ablation rows)
    build_eval        eval.json: per held-out image, the reference caption's summed NLL overall and
                      per word class (category / property); generated captions with CIDEr-D,
                      CLIP-S, RefCLIP-S and category / property word recall; per question,
                      open-ended and closed-set VQA accuracy at every shot count
    build_nll_baselines  the same NLL with no image (blind) and given another reference caption
                      as text (the ceiling); seed-free, built once per study
    build_baselines   the same VQA with no image (blind), with this seed's shots

Every encoder is scored on the same images, captions and questions in the same order, so the
findings can pair them. Features come from the FeatureStore (one encoder pass per image, ever).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from vlbridge.data import datasets
from vlbridge.data.features import FeatureStore
from vlbridge.data.objects_text import ANSWER_VOCABULARY, word_class
from vlbridge.io import atomic_write_json
from vlbridge.models.limber import load_trained_limber
from vlbridge.runtime import DistEnv, resolve_device
from vlbridge.study.config import StudyConfig

log = logging.getLogger(__name__)

VARIANTS = ("trained", "closed-form", "plain")  # projector variants: the study's, and the two ablations


# ------------------------------------------------------------------------------------ projectors
def build_projector(config: StudyConfig, spec: str, store: FeatureStore, seed: int, folder: Path,
                    variant: str = "trained", fill=lambda s: s, env: DistEnv | None = None) -> None:
    """Train (or, for "closed-form", only initialise) one projector for encoder `spec`.

    `env`: under torchrun every rank calls this (DDP training over the ranks); rank 0 writes.
    """
    from vlbridge.training.limber import initial_projector, train_limber

    train = config.limber.train
    data = replace(train.data, feature_cache=str(store.root), dataset=fill(train.data.dataset))
    train_config = replace(train, encoder=spec, seed=seed, device=config.device, data=data, lm=fill(train.lm))
    if variant == "plain":
        train_config = replace(train_config, projector_init="default")
    if variant == "closed-form":
        result = initial_projector(train_config, folder, env=env)
    else:
        result = train_limber(train_config, folder, env=env)
    if env is not None and not env.is_main:
        return
    final_loss = result.final_loss if result.steps else None  # the closed form alone has no training loss
    atomic_write_json(folder / "losses.json", {"steps": result.steps, "final_loss": final_loss,
                                               "losses": result.losses, "init": result.init_report,
                                               "feature_dim": int(result.model.projector.feature_dim)})


# ------------------------------------------------------------------------------------ data
def likelihood_records(config: StudyConfig, fill=lambda s: s) -> list:
    """The held-out images whose reference captions are scored (the same for every seed)."""
    return list(datasets.load_dataset(fill(config.limber.likelihood_set), "image_text").records)


def caption_records(config: StudyConfig, fill=lambda s: s) -> dict[str, list]:
    """Held-out generated-caption sets by name (an embedded set whose asset is missing is skipped)."""
    from vlbridge.errors import AssetMissingError

    sets = {}
    for name, spec in config.limber.caption_sets.items():
        try:
            sets[name] = list(datasets.load_dataset(fill(spec), "image_text").records)
        except AssetMissingError as err:
            log.warning("captioning set %s skipped: %s", name, err)
    return sets


def vqa_sets(config: StudyConfig, fill=lambda s: s) -> tuple[list, list]:
    """(questions, support): `vqa_per_type` questions of each answer type (seeded), and the shot pool."""
    questions = datasets.load_dataset(fill(config.limber.vqa_queries), "vqa").records
    per_type = config.limber.vqa_per_type
    if per_type:
        rng = np.random.default_rng([config.seed, 17])
        by_type: dict[str, list[int]] = {}
        for index, question in enumerate(questions):
            by_type.setdefault(question.answer_type or "other", []).append(index)
        kept = sorted(i for members in by_type.values()
                      for i in rng.permutation(members)[:per_type].tolist())
        questions = [questions[i] for i in kept]
    support = datasets.load_dataset(fill(config.limber.vqa_support), "vqa").records
    return list(questions), list(support)


# ------------------------------------------------------------------------------------ NLL
def nll_rows(losses) -> list[dict]:
    """Per image: id, summed NLL and token counts overall and per word class."""
    rows = []
    for item in losses:
        category, category_tokens = item.class_total("category")
        prop, prop_tokens = item.class_total("property")
        rows.append({"id": item.id, "total": item.total, "tokens": len(item.token_losses), "category": category,
                     "category_tokens": category_tokens, "property": prop, "property_tokens": prop_tokens})
    return rows


def _reference(record) -> str:
    return record.captions[0]


@torch.no_grad()
def image_nll(model, records: list, features: dict, batch_size: int) -> list[dict]:
    """NLL of each record's first reference caption after its image prefix."""
    from vlbridge.evaluation.likelihood import caption_losses

    contexts = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        stacked = torch.stack([features[r.id] for r in chunk]).to(model.device)  # (B, D)
        contexts += list(model.image_context(stacked))  # (B, [1+]P, H) per image
    return nll_rows(caption_losses(model.lm, [r.id for r in records], contexts, [_reference(r) for r in records],
                                   word_class, batch_size))


@torch.no_grad()
def baseline_nll(lm, records: list, batch_size: int, ceiling: bool) -> list[dict]:
    """Blind floor (one end-of-text token as context) or text ceiling (another reference caption)."""
    from vlbridge.evaluation.likelihood import caption_losses, start_context, text_context

    if ceiling:
        contexts = [text_context(lm, r.captions[1] if len(r.captions) > 1 else r.captions[0]) for r in records]
    else:
        contexts = [start_context(lm)] * len(records)
    return nll_rows(caption_losses(lm, [r.id for r in records], contexts, [_reference(r) for r in records],
                                   word_class, batch_size))


# ------------------------------------------------------------------------------------ captions
def word_recall(caption: str, references: list[str], kind: str) -> tuple[int, int]:
    """(hits, wanted): words of class `kind` in at least half the references, and how many the caption says."""
    def words(text: str) -> set[str]:
        found = set()
        for word in text.lower().split():
            word = word.strip(".,:;!?")
            if word_class(word) == kind:
                found.add(word[:-1] if word.endswith("s") and word_class(word[:-1]) == kind else word)
        return found

    counts: dict[str, int] = {}
    for reference in references:
        for word in words(reference):
            counts[word] = counts.get(word, 0) + 1
    wanted = {w for w, c in counts.items() if c * 2 >= len(references)}
    return len(wanted & words(caption)), len(wanted)


def caption_eval(model, records: list, features: dict, scorer, batch_size: int) -> dict:
    from vlbridge.evaluation.captioning import CaptionEvalConfig, evaluate_captioning

    scores = evaluate_captioning(model, records, CaptionEvalConfig(batch_size=batch_size), features=features,
                                 clip_scorer=scorer)
    for sample in scores["samples"]:
        for kind in ("category", "property"):
            sample[f"{kind}_recall"] = list(word_recall(sample["caption"], sample["refs"], kind))
    return scores


# ------------------------------------------------------------------------------------ VQA
def vqa_eval(model, config: StudyConfig, questions: list, support: list, seed: int, features: dict | None,
             blind: bool) -> dict:
    from vlbridge.evaluation.fewshot import FewShotConfig, evaluate_fewshot

    limber = config.limber
    vocabulary = dict(ANSWER_VOCABULARY) if limber.vqa_per_type else {}
    fewshot = FewShotConfig(shots=tuple(limber.shots), demo_sets=limber.demo_sets, seed=seed,
                            template=limber.vqa_template, blind=blind, batch_size=limber.batch_size,
                            max_new_tokens=limber.answer_tokens, vocabulary=vocabulary,
                            truncate_answers=limber.vqa_truncate_answers)
    results = evaluate_fewshot(model, questions, support, fewshot, features=features,
                               desc="vqa blind" if blind else "vqa")
    return {shots: [asdict(row) for row in rows] for shots, rows in results.items()}


# ------------------------------------------------------------------------------------ stages
def stored_view(store: FeatureStore, encoder, dataset_name: str, split: str, records: list):
    """{id: features} of `records`, extracted to disk if missing and read back two chunks at a time:
    an evaluation's memory does not grow with its number of images."""
    return store.extract(encoder, dataset_name, split, records, load=False).stored.view()


EVAL_PARTS = ("nll", "captions", "vqa")  # what an evaluation stage can score


def build_eval(config: StudyConfig, projector_dir: Path, store: FeatureStore, scorer, seed: int, folder: Path,
               parts: tuple[str, ...] = EVAL_PARTS, fill=lambda s: s) -> None:
    """eval.json of one projector: NLL rows, generated captions, VQA rows, as `parts` asks (the NLL always;
    ablations and the seeds after `reference_seeds` ask for less, see runner.eval_parts)."""
    model = load_trained_limber(projector_dir, device=resolve_device(config.device))
    limber = config.limber
    records = likelihood_records(config, fill)
    features = stored_view(store, model.encoder, fill(limber.likelihood_set), "nll", records)
    result: dict = {"nll": image_nll(model, records, features, limber.batch_size)}
    if "captions" in parts:
        result["captioning"] = {}
        for name, caption_set in caption_records(config, fill).items():
            feats = stored_view(store, model.encoder, fill(limber.caption_sets[name]), "captions", caption_set)
            result["captioning"][name] = caption_eval(model, caption_set, feats, scorer, limber.batch_size)
    if "vqa" in parts:
        questions, support = vqa_sets(config, fill)
        name = fill(f"{limber.vqa_queries}+{limber.vqa_support}")
        feats = stored_view(store, model.encoder, name, "vqa", questions + support)  # keyed by image id
        result["vqa"] = vqa_eval(model, config, questions, support, seed, feats, blind=False)
    atomic_write_json(folder / "eval.json", result)


def build_nll_baselines(config: StudyConfig, projector_dir: Path, folder: Path, fill=lambda s: s) -> None:
    """eval.json of the no-image NLL rows: blind (the floor) and, with `text_ceiling`, the text ceiling.
    No seed: the frozen LM scores the same captions whatever the seed, so every seed reads one copy."""
    model = load_trained_limber(projector_dir, device=resolve_device(config.device), with_encoder=False)
    limber = config.limber
    records = likelihood_records(config, fill)
    result: dict = {"nll": {"blind": baseline_nll(model.lm, records, limber.batch_size, ceiling=False)}}
    if limber.text_ceiling:
        result["nll"]["text"] = baseline_nll(model.lm, records, limber.batch_size, ceiling=True)
    atomic_write_json(folder / "eval.json", result)


def build_baselines(config: StudyConfig, projector_dir: Path, seed: int, folder: Path, fill=lambda s: s) -> None:
    """eval.json of the blind VQA baseline: the same questions and this seed's shots, no image."""
    model = load_trained_limber(projector_dir, device=resolve_device(config.device), with_encoder=False)
    questions, support = vqa_sets(config, fill)
    result = {"vqa": vqa_eval(model, config, questions, support, seed, None, blind=True)}
    atomic_write_json(folder / "eval.json", result)


def read_eval(folder: Path) -> dict:
    return json.loads((folder / "eval.json").read_text())
