"""Zero-shot classifier and scores, against open_clip's classifier builder and brute-force metrics."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.eval_helpers import single_thread, tiny_clip_bundle  # noqa: F401  (autouse fixture)
from open_clip.zero_shot_classifier import build_zero_shot_classifier
from sklearn.metrics import balanced_accuracy_score

from vlbridge.evaluation.templates import load_templates
from vlbridge.evaluation.zero_shot import build_classifier, classification_scores, zero_shot_scores


def test_classifier_matches_open_clip_reference_across_chunks():
    bundle = tiny_clip_bundle()
    classnames = [f"class number {i}" for i in range(40)]  # > one chunk of 32 classes
    templates = ["a photo of a {}.", "a drawing of the {}.", "{}"]
    ours = build_classifier(bundle, classnames, templates)  # (C, E)
    reference = build_zero_shot_classifier(bundle.model, bundle.tokenizer, classnames, templates)  # (E, C)
    assert ours.shape == (40, 16)
    torch.testing.assert_close(ours, reference.T, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.norm(dim=1), torch.ones(40))


def test_classifier_is_mean_of_unit_prompt_embeddings_renormalised():
    bundle = tiny_clip_bundle()
    templates = load_templates("openai")[:5]
    ours = build_classifier(bundle, ["red circle", "blue star"], templates)
    for row, name in zip(ours, ["red circle", "blue star"]):
        prompts = [t.replace("{}", name) for t in templates]
        units = F.normalize(bundle.model.encode_text(bundle.tokenizer(prompts)).detach(), dim=-1)
        torch.testing.assert_close(row, F.normalize(units.mean(0), dim=0), atol=1e-5, rtol=1e-5)


def _brute_force_scores(images, classifier, labels):
    similarity = (F.normalize(images, dim=-1) @ classifier.T).numpy()
    order = np.argsort(-similarity, axis=1)
    y = labels.numpy()
    top1 = float(np.mean(order[:, 0] == y))
    top5 = float(np.mean([y[i] in order[i, :5] for i in range(len(y))]))
    recall = balanced_accuracy_score(y, order[:, 0])  # mean recall over classes present in y
    return top1, top5, recall


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_scores_match_brute_force_on_random_embeddings():
    generator = torch.Generator().manual_seed(1)
    classifier = F.normalize(torch.randn(12, 8, generator=generator), dim=-1)
    labels = torch.randint(0, 11, (300,), generator=generator)  # class 11 never appears
    images = classifier[labels] + 0.9 * torch.randn(300, 8, generator=generator)  # (N, E)
    scores = zero_shot_scores(images * 3.0, classifier, labels)  # scale must not matter
    top1, top5, recall = _brute_force_scores(images, classifier, labels)
    assert scores["n"] == 300
    assert scores["top1"] == pytest.approx(top1)
    assert scores["top5"] == pytest.approx(top5)
    assert scores["mean_per_class_recall"] == pytest.approx(recall)
    assert 0.2 < top1 < 0.95 and top5 > top1  # a non-trivial problem


def test_mean_per_class_recall_weights_classes_equally():
    logits = torch.eye(3)[[0, 0, 0, 0, 1, 0]]  # predictions 0,0,0,0,1,0
    labels = torch.tensor([0, 0, 0, 0, 1, 1])  # class 0: 4/4, class 1: 1/2; class 2 absent
    scores = classification_scores(logits, labels)
    assert scores["top1"] == pytest.approx(5 / 6)
    assert scores["mean_per_class_recall"] == pytest.approx(0.75)
    assert "top5" not in scores  # fewer than 5 classes


def test_perfect_images_score_one():
    classifier = torch.eye(6)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 5])
    scores = zero_shot_scores(torch.eye(6)[labels], classifier, labels)
    assert scores["top1"] == scores["top5"] == scores["mean_per_class_recall"] == 1.0


def test_shape_mismatch_says_what_was_expected():
    with pytest.raises(ValueError, match="8-d image embeddings, got 4-d"):
        zero_shot_scores(torch.randn(3, 4), torch.randn(5, 8), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
        zero_shot_scores(torch.randn(2, 8), torch.randn(5, 8), torch.tensor([0, 7]))
