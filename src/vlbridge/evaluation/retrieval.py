"""Image-text retrieval recall@k with several captions per image.

`retrieval_scores(image_embeddings, text_embeddings, text_image_index)` ranks, for every
image, all texts (image -> text) and, for every text, all images (text -> image) by cosine
similarity. A query is a hit at k when ANY of its matching items is among the k most
similar: an image matches all of its captions; a caption matches its image (and any other
image given the same `image_key`, e.g. a duplicate). Ties between a match and a non-match
count for the query (its rank is 1 + the number of non-matches scoring strictly higher).

`recall_at_k(similarity, positives, ks)` is the general form for any (queries x gallery)
similarity and boolean match matrix; it works in query chunks, so large galleries never
need more than (chunk x gallery) memory beyond the similarity itself.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

DEFAULT_KS = (1, 5, 10)  # recall@k reported by default
QUERY_CHUNK = 4096  # queries ranked together


def retrieval_scores(
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    text_image_index: Sequence[int] | torch.Tensor,
    ks: Sequence[int] = DEFAULT_KS,
    image_keys: Sequence[str] | None = None,
) -> dict:
    """{image_to_text_R@k, text_to_image_R@k for k in ks, n_images, n_texts}; text i describes image text_image_index[i]."""
    n_images, n_texts = len(image_embeddings), len(text_embeddings)
    owner = torch.as_tensor(text_image_index, dtype=torch.long)  # (T,) image index of each text
    if image_embeddings.ndim != 2 or text_embeddings.ndim != 2 or image_embeddings.shape[1] != text_embeddings.shape[1]:
        raise ValueError(
            f"expected (I, E) image and (T, E) text embeddings of the same E, got {tuple(image_embeddings.shape)} "
            f"and {tuple(text_embeddings.shape)}"
        )
    if n_images == 0 or n_texts == 0:
        raise ValueError(f"retrieval needs images and texts, got {n_images} images and {n_texts} texts")
    if owner.shape != (n_texts,) or (n_texts and (owner.min() < 0 or owner.max() >= n_images)):
        raise ValueError(f"text_image_index needs one image index in [0, {n_images}) per text ({n_texts} texts)")
    positives = match_matrix(owner, n_images, image_keys)  # (T, I)
    similarity = F.normalize(text_embeddings.float(), dim=-1) @ F.normalize(image_embeddings.float(), dim=-1).T  # (T, I)
    text_to_image = recall_at_k(similarity, positives, ks)
    image_to_text = recall_at_k(similarity.T, positives.T, ks)
    scores = {f"image_to_text_R@{k}": image_to_text[k] for k in ks}
    scores.update({f"text_to_image_R@{k}": text_to_image[k] for k in ks})
    scores.update(n_images=n_images, n_texts=n_texts)
    return scores


def match_matrix(owner: torch.Tensor, n_images: int, image_keys: Sequence[str] | None = None) -> torch.Tensor:
    """(T, I) bool: text t matches image i (its own image, or one with the same key)."""
    if image_keys is None:
        return F.one_hot(owner, n_images).bool()  # (T, I)
    if len(image_keys) != n_images:
        raise ValueError(f"image_keys needs one key per image ({n_images}), got {len(image_keys)}")
    key_ids = {key: number for number, key in enumerate(dict.fromkeys(image_keys))}
    image_key_ids = torch.tensor([key_ids[key] for key in image_keys])  # (I,)
    return image_key_ids[owner][:, None] == image_key_ids[None, :]  # (T, I)


def recall_at_k(similarity: torch.Tensor, positives: torch.Tensor, ks: Sequence[int] = DEFAULT_KS) -> dict[int, float]:
    """{k: fraction of queries (rows) with a positive among their k highest-similarity columns}."""
    if similarity.shape != positives.shape:
        raise ValueError(f"similarity {tuple(similarity.shape)} and positives {tuple(positives.shape)} must match")
    if not positives.any(dim=1).all():
        missing = int((~positives.any(dim=1)).sum())
        raise ValueError(f"every query needs at least one matching item; {missing} queries have none")
    ranks = torch.cat(
        [
            _best_positive_rank(similarity[start : start + QUERY_CHUNK], positives[start : start + QUERY_CHUNK])
            for start in range(0, len(similarity), QUERY_CHUNK)
        ]
    )  # (Q,) 0-based
    return {int(k): int((ranks < k).sum()) / len(ranks) for k in ks}


def _best_positive_rank(similarity: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """(Q,) number of non-matches scoring strictly above each query's best match."""
    best_match = similarity.masked_fill(~positives, float("-inf")).max(dim=1, keepdim=True).values  # (Q, 1)
    return (similarity > best_match).sum(dim=1)  # (Q,) matches never score above the best match
