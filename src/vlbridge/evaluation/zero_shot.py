"""Zero-shot classification with a CLIP: class names x templates -> text classifier -> scores.

`build_classifier(bundle, classnames, templates)` embeds every "template filled with class
name" text, L2-normalises each embedding, averages them per class and renormalises: a
(C, E) matrix whose rows are unit class prototypes (CLIP's prompt ensembling).
`zero_shot_scores(image_embeddings, classifier, labels)` scores images by cosine similarity
against those rows and returns top-1, top-5 (when there are at least 5 classes) and mean
per-class recall. The metric helpers (`classification_scores`, `mean_per_class_recall`) are
shared with the linear probe and robustness evaluation.

Everything here is a pure function of its tensors; image embeddings come from
`ClipBundle.embed_images` (or a feature cache), so the same features serve several heads.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from vlbridge.evaluation.templates import fill_template
from vlbridge.models.bundle import ClipBundle

CLASSES_PER_CHUNK = 32  # classes whose prompts are embedded together (progress-bar granularity)


def build_classifier(
    bundle: ClipBundle, classnames: Sequence[str], templates: Sequence[str], batch_size: int = 256
) -> torch.Tensor:
    """(C, E) zero-shot classifier: per class, the renormalised mean of its unit prompt embeddings."""
    if not classnames:
        raise ValueError("build_classifier needs at least one class name, got none")
    if not templates:
        raise ValueError("build_classifier needs at least one template, got none")
    num_templates = len(templates)
    chunks = []
    starts = range(0, len(classnames), CLASSES_PER_CHUNK)
    for start in tqdm(starts, desc="zero-shot classifier", unit="chunk", disable=True if len(starts) < 2 else None, leave=False):
        chunk_names = classnames[start : start + CLASSES_PER_CHUNK]
        prompts = [fill_template(template, name) for name in chunk_names for template in templates]
        prompt_embeddings = bundle.embed_texts(prompts, batch_size=batch_size, normalize=True)  # (c*T, E)
        per_class = prompt_embeddings.view(len(chunk_names), num_templates, -1)  # (c, T, E)
        chunks.append(F.normalize(per_class.mean(dim=1), dim=-1))  # (c, E)
    return torch.cat(chunks)  # (C, E)


def zero_shot_scores(image_embeddings: torch.Tensor, classifier: torch.Tensor, labels: torch.Tensor) -> dict:
    """top1 / top5 (C >= 5) / mean_per_class_recall / n of images scored against classifier rows."""
    if image_embeddings.ndim != 2 or classifier.ndim != 2:
        raise ValueError(
            f"expected (N, E) image embeddings and a (C, E) classifier, got {tuple(image_embeddings.shape)} "
            f"and {tuple(classifier.shape)}"
        )
    if image_embeddings.shape[1] != classifier.shape[1]:
        raise ValueError(
            f"classifier expects {classifier.shape[1]}-d image embeddings, got {image_embeddings.shape[1]}-d"
        )
    image_units = F.normalize(image_embeddings.float(), dim=-1)  # (N, E)
    logits = image_units @ classifier.float().T  # (N, C) cosine similarities
    return classification_scores(logits, labels)


def classification_scores(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Metrics of (N, C) class scores against (N,) integer labels: top1, top5 (if C >= 5), recall, n."""
    labels = torch.as_tensor(labels, dtype=torch.long, device=logits.device)
    num_classes = logits.shape[1]
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"expected (N, C) logits and (N,) labels, got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if len(labels) == 0:
        raise ValueError("cannot score an empty evaluation set (0 labels)")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got values {labels.min()}..{labels.max()}")
    scores = {"top1": topk_accuracy(logits, labels, 1)}
    if num_classes >= 5:
        scores["top5"] = topk_accuracy(logits, labels, 5)
    scores["mean_per_class_recall"] = mean_per_class_recall(logits.argmax(dim=1), labels, num_classes)
    scores["n"] = len(labels)
    return scores


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of rows whose label is among the k highest scores."""
    top_indices = logits.topk(k, dim=1).indices  # (N, k)
    return int((top_indices == labels[:, None]).any(dim=1).sum()) / len(labels)


def mean_per_class_recall(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Mean over the classes present in `labels` of the fraction of that class predicted correctly."""
    correct = (predictions == labels).double()  # (N,)
    hits = torch.zeros(num_classes, dtype=torch.float64, device=labels.device).index_add_(0, labels, correct)  # (C,)
    counts = torch.bincount(labels, minlength=num_classes).double()  # (C,)
    present = counts > 0
    return float((hits[present] / counts[present]).mean())
