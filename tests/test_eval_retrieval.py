"""Retrieval recall@k with several captions per image, against a brute-force sort-based reference."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.eval_helpers import single_thread  # noqa: F401  (autouse fixture)

from vlbridge.evaluation import retrieval
from vlbridge.evaluation.retrieval import recall_at_k, retrieval_scores


def _brute_force(images, texts, owners, ks):
    """Sort every query's gallery by cosine similarity; hit if any match is in the first k."""
    similarity = (F.normalize(texts, dim=-1) @ F.normalize(images, dim=-1).T).numpy()  # (T, I)
    owners = np.asarray(owners)
    image_to_text, text_to_image = {k: [] for k in ks}, {k: [] for k in ks}
    for image in range(len(images)):
        order = np.argsort(-similarity[:, image], kind="stable")
        for k in ks:
            image_to_text[k].append(bool(np.any(owners[order[:k]] == image)))
    for text in range(len(texts)):
        order = np.argsort(-similarity[text], kind="stable")
        for k in ks:
            text_to_image[k].append(bool(owners[text] in order[:k]))
    return {k: np.mean(v) for k, v in image_to_text.items()}, {k: np.mean(v) for k, v in text_to_image.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_with_several_captions_per_image(seed):
    generator = torch.Generator().manual_seed(seed)
    n_images, dim = 60, 8
    captions_per_image = torch.randint(1, 6, (n_images,), generator=generator)  # 1..5 captions each
    owners = torch.repeat_interleave(torch.arange(n_images), captions_per_image)  # (T,)
    owners = owners[torch.randperm(len(owners), generator=generator)]  # captions in any order
    images = torch.randn(n_images, dim, generator=generator)
    texts = images[owners] + 1.2 * torch.randn(len(owners), dim, generator=generator)  # noisy captions
    ks = (1, 5, 10)
    scores = retrieval_scores(images, texts, owners, ks)
    expected_i2t, expected_t2i = _brute_force(images, texts, owners, ks)
    for k in ks:
        assert scores[f"image_to_text_R@{k}"] == pytest.approx(expected_i2t[k], abs=1e-12)
        assert scores[f"text_to_image_R@{k}"] == pytest.approx(expected_t2i[k], abs=1e-12)
    assert scores["n_images"] == n_images and scores["n_texts"] == len(owners)
    assert 0 < scores["text_to_image_R@1"] < scores["text_to_image_R@10"] < 1  # non-trivial


def test_chunked_ranking_equals_unchunked(monkeypatch):
    generator = torch.Generator().manual_seed(3)
    similarity = torch.randn(50, 40, generator=generator)
    positives = F.one_hot(torch.randint(0, 40, (50,), generator=generator), 40).bool()
    positives[::3, 7] = True  # some queries with two matches
    whole = recall_at_k(similarity, positives, (1, 3, 5))
    monkeypatch.setattr(retrieval, "QUERY_CHUNK", 7)
    assert recall_at_k(similarity, positives, (1, 3, 5)) == whole


def test_hand_made_case():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.1], [0.2, 1.0], [1.0, 0.9], [-1.0, 0.0]])
    owners = [0, 1, 1, 1]  # image 1 has three captions, one of them closer to image 0
    scores = retrieval_scores(images, texts, owners, ks=(1, 2))
    # image 0's best text is text 0 (own): hit@1. image 1's best text is text 1 (own): hit@1
    assert scores["image_to_text_R@1"] == 1.0
    # texts 0, 1 find their image first; text 2 is nearer image 0; text 3 is nearer image 1 (cos 0 > -1)
    assert scores["text_to_image_R@1"] == pytest.approx(3 / 4)
    assert scores["text_to_image_R@2"] == 1.0


def test_duplicate_images_count_as_matches_with_image_keys():
    images = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # images 0 and 1 are the same picture
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    owners = [1, 2]
    keyed = retrieval_scores(images, texts, owners, ks=(1,), image_keys=["a", "a", "b"])
    assert keyed["text_to_image_R@1"] == 1.0  # image 0 (a copy of image 1) is a hit
    assert keyed["image_to_text_R@1"] == 1.0  # image 0 matches image 1's caption


def test_k_beyond_gallery_is_always_a_hit():
    images, texts = torch.randn(3, 4), torch.randn(5, 4)
    scores = retrieval_scores(images, texts, [0, 1, 2, 2, 0], ks=(10,))
    assert scores["image_to_text_R@10"] == scores["text_to_image_R@10"] == 1.0


def test_bad_inputs_say_what_was_expected():
    with pytest.raises(ValueError, match="one image index in"):
        retrieval_scores(torch.randn(3, 4), torch.randn(2, 4), [0, 5])
    with pytest.raises(ValueError, match="same E"):
        retrieval_scores(torch.randn(3, 4), torch.randn(2, 5), [0, 1])
    with pytest.raises(ValueError, match="1 queries have none"):
        recall_at_k(torch.randn(2, 3), torch.tensor([[True, False, False], [False, False, False]]))
