"""Study stages on the CLIP side: train the CLIP, then the zero-shot / probe / robustness table.

Each `build_*` function writes its outputs into the folder the stage cache gives it; the
runner decides whether it needs to run at all. The table compares, per dataset, the trained
CLIP's zero-shot classifier with linear probes on frozen features of several encoders (the
CLIP's own image embedding and EfficientNet-Lite0's ImageNet features by default), all read
through the FeatureStore so repeated runs never re-encode an image.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import asdict, replace
from pathlib import Path

import torch.nn.functional as F

from vlbridge.data import datasets
from vlbridge.data.features import FeatureStore
from vlbridge.evaluation.features_io import labelled_features
from vlbridge.evaluation.linear_probe import ProbeConfig, linear_probe, select_and_fit
from vlbridge.evaluation.robustness import LabelledFeatures, robustness_scores
from vlbridge.evaluation.templates import templates_for
from vlbridge.evaluation.zero_shot import build_classifier, zero_shot_scores
from vlbridge.study.config import StudyConfig
from vlbridge.training.clip import train_clip

log = logging.getLogger(__name__)


def build_clip(config: StudyConfig, folder: Path) -> None:
    """Train the study's CLIP into `folder` (load it back with load_clip(folder)).

    summary.json is train_clip's result without its run_dir: `folder` is a temporary name that
    the stage cache renames, and the stage folder holding summary.json is the run dir.
    """
    result = train_clip(replace(config.clip, seed=config.seed, device=config.device), folder)
    summary = asdict(result)
    summary.pop("run_dir", None)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str))


def read_curve(run_dir: Path, column: str = "loss") -> list[tuple[int, float]]:
    """(step, value) pairs of one metrics.csv column (rows without it are skipped)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [(int(row["step"]), float(row[column])) for row in csv.DictReader(handle) if row.get(column)]


def labelled_split(dataset: str, split: str, n: int, seed: int) -> datasets.Dataset:
    """The classification view of `split` of dataset spec `dataset` (n images, a seeded subset)."""
    return datasets.load_dataset(dataset, "classification", split=split, n=n, seed=seed)


def build_clip_table(config: StudyConfig, clip_spec: str, probe_specs: dict[str, str], store: FeatureStore,
                     folder: Path) -> None:
    """Zero-shot and probes per dataset, robustness on the shapes-world shifts -> table.json."""
    from vlbridge.models.clip_loading import load_clip
    from vlbridge.models.registry import build_encoder
    from vlbridge.runtime import resolve_device

    table = config.clip_table
    device = resolve_device(config.device)
    bundle = load_clip(clip_spec, device=device)
    encoders = {key: build_encoder(spec, device=str(device)) for key, spec in probe_specs.items()}
    encoders.setdefault("clip", build_encoder(f"clip:{clip_spec}", device=str(device)))
    probe_config = ProbeConfig(c_steps=table.probe_c_steps, max_iter=table.probe_max_iter, seed=config.seed)
    result: dict = {"zero_shot": {}, "linear_probe": {}, "robustness": {}, "scorer": bundle.name, "templates": {}}
    templates_by_dataset = {}
    for dataset in table.datasets:
        result["templates"][dataset], templates = templates_for(table.templates, dataset)
        templates_by_dataset[dataset] = templates
        train = labelled_split(dataset, "train", table.n_train, config.seed)
        test = labelled_split(dataset, "test", table.n_test, config.seed)
        clip_test = labelled_features(store, encoders["clip"], test, table.batch_size)
        classifier = build_classifier(bundle, test.classnames, templates)  # (C, E)
        zero_shot = zero_shot_scores(F.normalize(clip_test.features, dim=-1), classifier, clip_test.labels)
        result["zero_shot"][dataset] = {**zero_shot, "n": len(clip_test.labels), "classes": len(test.classnames)}
        probes = {}
        for key in probe_specs:
            train_f = labelled_features(store, encoders[key], train, table.batch_size)
            test_f = labelled_features(store, encoders[key], test, table.batch_size)
            scores = linear_probe(train_f.features, train_f.labels, test_f.features, test_f.labels,
                                  len(test.classnames), probe_config)
            probes[key] = scores["top1"]
        result["linear_probe"][dataset] = {"top1": probes.get("clip", next(iter(probes.values()), None)),
                                           "by_features": probes}
        log.info("CLIP table %s: zero-shot %.3f, probes %s", dataset, zero_shot["top1"], probes)
    if "shapes" in table.datasets and table.shifts:
        result["robustness"] = shapes_robustness(config, bundle, templates_by_dataset["shapes"], encoders["clip"], store,
                                                 probe_config)
    (folder / "table.json").write_text(json.dumps(result, indent=2))


def shapes_robustness(config: StudyConfig, bundle, templates, encoder, store, probe_config) -> dict:
    """Zero-shot and probe accuracy on clean vs shifted renderings of the same test scenes."""
    table = config.clip_table
    train = labelled_split("shapes", "train", table.n_train, config.seed)
    clean = labelled_split("shapes", "test", table.n_test, config.seed)
    train_f = labelled_features(store, encoder, train, table.batch_size)
    clean_f = labelled_features(store, encoder, clean, table.batch_size)
    shifted = {}
    for shift in table.shifts:
        data = labelled_split(f"shapes?shift={shift}", "test", table.n_test, config.seed)
        shifted[shift] = labelled_features(store, encoder, data, table.batch_size)
    normalise = lambda lf: LabelledFeatures(F.normalize(lf.features, dim=-1), lf.labels)  # noqa: E731
    classifier = build_classifier(bundle, clean.classnames, templates)
    probe = select_and_fit(train_f.features, train_f.labels, len(clean.classnames), probe_config).probe
    zero = robustness_scores(normalise(clean_f), {k: normalise(v) for k, v in shifted.items()}, classifier=classifier)
    probed = robustness_scores(clean_f, shifted, probe=probe)
    rows = {"clean": {"zero_shot": zero["clean"]["zero_shot_top1"], "probe": probed["clean"]["probe_top1"],
                      "zero_shot_drop": 0.0, "probe_drop": 0.0}}
    for shift in table.shifts:
        rows[shift] = {"zero_shot": zero["shifts"][shift]["zero_shot_top1"],
                       "zero_shot_drop": zero["shifts"][shift]["zero_shot_drop"],
                       "probe": probed["shifts"][shift]["probe_top1"],
                       "probe_drop": probed["shifts"][shift]["probe_drop"]}
    return rows


def similarity_matrix(clip_dir: Path, n: int, seed: int) -> tuple:
    """(matrix, image ids, captions) of the trained CLIP on n held-out single-object images."""
    from vlbridge.models.clip_loading import load_clip

    bundle = load_clip(clip_dir, device="cpu")
    records = labelled_split("shapes", "test", n, seed + 1).records
    captions = [f"a photo of a {record.label}." for record in records]
    images = bundle.embed_images([record.image for record in records])  # (n, E)
    texts = bundle.embed_texts(captions)  # (n, E)
    return (images @ texts.T).numpy(), [r.id for r in records], [r.label for r in records]
