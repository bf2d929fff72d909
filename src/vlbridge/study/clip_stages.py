"""Study stages on the encoder side: the supervision ladder, the scorer, and the CLIP table.

Each `build_*` function writes into the folder the stage cache gives it; the runner decides
whether it needs to run at all.

The ladder (`build_rung`) is one backbone — the image tower of `ladder.train.model.arch` — made
four ways from the same initial weights (the seed's CLIP init), the same training images, steps,
batch and augmentations:

    random           the initial weights, untrained (every trained rung's random-init twin)
    self-supervised  SimCLR on two augmented views (no language)
    labels           multi-label classification of the object nouns in the captions
    clip             contrastive on the captions (`vlbridge train clip`)

Every rung leaves its tower in `<stage>/tower` (read as `tower:DIR`: the same layer and width for
all) and a summary.json that becomes `results.json["encoders"][rung]`.

The CLIP table (`build_clip_table`) records per test image whether zero-shot and each probe got it
right, clean and under each shift, so the findings can bootstrap over images.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from vlbridge.data import datasets
from vlbridge.data.features import FeatureStore
from vlbridge.evaluation.features_io import labelled_features
from vlbridge.evaluation.linear_probe import ProbeConfig, select_and_fit
from vlbridge.evaluation.templates import templates_for
from vlbridge.evaluation.zero_shot import build_classifier
from vlbridge.io import atomic_write_json
from vlbridge.study.config import LANGUAGE_SUPERVISION, StudyConfig
from vlbridge.training.clip import ClipTrainConfig, train_clip

log = logging.getLogger(__name__)

TOWER_DIR = "tower"  # a rung's tower folder inside its stage folder
OBJECTIVES = {"self-supervised": "simclr", "labels": "labels"}  # tower rung -> training/tower.py objective
DESCRIPTIONS = {  # rung -> the objective in words (results.json["encoders"][rung]["objective"])
    "random": "none (initial weights)", "self-supervised": "SimCLR (two augmented views, NT-Xent)",
    "labels": "multi-label classification of the object nouns", "clip": "contrastive image-caption (CLIP)",
}


def ladder_recipe(config: StudyConfig, seed: int) -> ClipTrainConfig:
    return replace(config.ladder.train, seed=seed, device=config.device)


def build_rung(config: StudyConfig, rung: str, seed: int, folder: Path) -> None:
    """Make rung `rung` of the ladder for `seed` into folder (tower in folder/tower, summary.json)."""
    from vlbridge.models.tower import build_tower, save_tower

    recipe = ladder_recipe(config, seed)
    tower_dir = folder / TOWER_DIR
    summary = {"backbone": recipe.model.arch, "objective": DESCRIPTIONS[rung], "language_supervision": LANGUAGE_SUPERVISION[rung],
               "train_steps": 0, "train_images": 0, "seed": seed}
    if rung == "random":
        tower, model_cfg = build_tower(recipe.model.arch, seed, recipe.model.image_size)
        save_tower(tower, model_cfg, tower_dir, objective="random")
    elif rung == "clip":
        result = train_clip(recipe, folder)
        _save_clip_tower(folder, tower_dir)
        summary.update(train_steps=result.steps, final_loss=result.final_loss, zeroshot_top1=result.zeroshot_top1,
                       skipped=result.skipped)
    else:
        from vlbridge.training.tower import TowerTrainConfig, train_tower

        tower_config = TowerTrainConfig(**{**vars(recipe), "objective": OBJECTIVES[rung],
                                           "temperature": config.ladder.temperature})
        result = train_tower(tower_config, tower_dir)
        summary.update(train_steps=result.steps, final_loss=result.final_loss)
    if rung != "random":
        summary["train_images"] = _source_size(recipe)
        summary["losses"] = read_curve(tower_dir if rung != "clip" else folder)
    summary["feature_dim"] = _feature_dim(tower_dir)
    atomic_write_json(folder / "summary.json", summary)


def _save_clip_tower(run_dir: Path, tower_dir: Path) -> None:
    """The trained CLIP's image tower as a tower run (the same layer the other rungs are read at)."""
    from vlbridge.models.clip_loading import load_clip
    from vlbridge.models.tower import save_tower

    bundle = load_clip(run_dir, device="cpu")
    model_cfg = json.loads((run_dir / "open_clip_config.json").read_text())["model_cfg"]
    save_tower(bundle.model.visual, model_cfg, tower_dir, objective="clip")


def _source_size(recipe: ClipTrainConfig) -> int:
    from vlbridge.training.clip_data import load_source

    source = load_source(recipe.data)
    return len(source) if isinstance(source, list) else 0


def _feature_dim(tower_dir: Path) -> int:
    from vlbridge.models.tower import read_tower_config

    return int(read_tower_config(tower_dir)["model_cfg"]["embed_dim"])


def build_scorer(config: StudyConfig, seed: int, folder: Path) -> None:
    """An independent CLIP for CLIP-S / RefCLIP-S: the ladder's recipe under another seed."""
    result = train_clip(ladder_recipe(config, seed + config.scorer.seed_offset), folder)
    atomic_write_json(folder / "summary.json", {"seed": seed + config.scorer.seed_offset,
                                               "zeroshot_top1": result.zeroshot_top1, "final_loss": result.final_loss})


def read_curve(run_dir: Path, column: str = "loss") -> list[tuple[int, float]]:
    """(step, value) pairs of one metrics.csv column (rows without it are skipped)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [(int(row["step"]), float(row[column])) for row in csv.DictReader(handle) if row.get(column)]


# ------------------------------------------------------------------------------------ the CLIP table
def labelled_split(dataset: str, split: str, n: int, seed: int) -> datasets.Dataset:
    """The classification view of `split` of dataset spec `dataset` (n images, a seeded subset)."""
    return datasets.load_dataset(dataset, "classification", split=split, n=n, seed=seed)


def shifted_spec(dataset: str, shift: str) -> str:
    return f"{dataset}{'&' if '?' in dataset else '?'}shift={shift}"


def build_clip_table(config: StudyConfig, clip_dir: Path, probe_specs: dict[str, str], store: FeatureStore,
                     seed: int, folder: Path) -> None:
    """Zero-shot and probes per dataset (per-image correctness), shifts of the first -> table.json."""
    from vlbridge.models.clip_loading import load_clip
    from vlbridge.models.registry import build_encoder
    from vlbridge.runtime import resolve_device

    table = config.clip_table
    device = resolve_device(config.device)
    bundle = load_clip(str(clip_dir), device=device)
    encoders = {key: build_encoder(spec, device=str(device)) for key, spec in probe_specs.items()}
    probe_config = ProbeConfig(c_steps=table.probe_c_steps, max_iter=table.probe_max_iter, seed=seed)
    result: dict = {"datasets": {}, "scorer": bundle.name, "shifts": []}
    for position, dataset in enumerate(table.datasets):
        shifts = table.shifts if position == 0 else []
        # the same labelled images for every seed (as the captions and questions): seeds vary the models,
        # and a pretrained reference encoder's features are extracted once for all of them
        result["datasets"][dataset] = _dataset_table(config, dataset, shifts, bundle, encoders, store, probe_config,
                                                     config.seed)
        if position == 0:
            result["shifts"] = list(shifts)
    atomic_write_json(folder / "table.json", result)


def _dataset_table(config, dataset, shifts, bundle, encoders, store, probe_config, seed) -> dict:
    """{"templates", "classes", "zero_shot": {condition: [0/1]}, "probes": {key: {condition: [0/1]}}, "C"}.

    `seed` draws the labelled images; `probe_config.seed` the probes' validation split."""
    table = config.clip_table
    template_set, templates = templates_for(table.templates, dataset)
    train = labelled_split(dataset, "train", table.n_train, seed)
    tests = {"clean": labelled_split(dataset, "test", table.n_test, seed)}
    tests.update({shift: labelled_split(shifted_spec(dataset, shift), "test", table.n_test, seed) for shift in shifts})
    classifier = build_classifier(bundle, tests["clean"].classnames, templates)  # (C, E)
    zero_features = encoders[table.clip_probe]
    entry: dict = {"templates": template_set, "classes": len(tests["clean"].classnames), "zero_shot": {}, "probes": {},
                   "C": {}}
    for condition, data in tests.items():
        lf = labelled_features(store, zero_features, data, table.batch_size)
        predictions = (F.normalize(lf.features, dim=-1) @ classifier.float().T).argmax(dim=1)  # (N,)
        entry["zero_shot"][condition] = _correct(predictions, lf.labels)
    for key, encoder in encoders.items():
        train_f = labelled_features(store, encoder, train, table.batch_size)
        fit = select_and_fit(train_f.features, train_f.labels, len(train.classnames), probe_config)
        entry["C"][key] = fit.c
        entry["probes"][key] = {}
        for condition, data in tests.items():
            lf = labelled_features(store, encoder, data, table.batch_size)
            entry["probes"][key][condition] = _correct(fit.probe.predict(lf.features).cpu(), lf.labels)
    log.info("CLIP table %s: zero-shot %.3f, probes %s", dataset, _mean(entry["zero_shot"]["clean"]),
             {k: round(_mean(v["clean"]), 3) for k, v in entry["probes"].items()})
    return entry


def _correct(predictions: torch.Tensor, labels: torch.Tensor) -> list[int]:
    return [int(p == y) for p, y in zip(predictions.tolist(), labels.tolist())]


def _mean(values: list[int]) -> float:
    return sum(values) / max(1, len(values))


def similarity_matrix(clip_dir: Path, n: int, seed: int) -> tuple:
    """(matrix, image ids, captions) of the trained CLIP on n held-out single-object images."""
    from vlbridge.models.clip_loading import load_clip

    bundle = load_clip(clip_dir, device="cpu")
    records = labelled_split("shapes", "test", n, seed + 1).records
    captions = [f"a photo of a {record.label}." for record in records]
    images = bundle.embed_images([record.image for record in records])  # (n, E)
    texts = bundle.embed_texts(captions)  # (n, E)
    return (images @ texts.T).numpy(), [r.id for r in records], [r.label for r in records]


def summary_of(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())

