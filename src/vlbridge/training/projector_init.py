"""How a fresh LiMBeR projector starts (`LimberTrainConfig.projector_init`).

- "default": nn.Linear's init. It ignores the size of the image features: CLIP embeddings have
  norms around 15-20, so the first prefix vectors are ~10x longer than the LM's word embeddings
  and the first steps go into shrinking them.
- "embedding-scale" (the default): W ~ N(0, s^2), b = 0 with s = std(word embeddings) / mean
  ||x|| over the training features, so each prefix element starts with the spread of a word
  embedding. Overfitting one batch of 16 reached loss 3.8 after 10 steps, against 5.2 with
  "default".
- "caption-ridge": a closed-form warm start. Prefix vector j is regressed (ridge least squares,
  centred) from the image features onto the LM's input embedding of token j of the image's first
  caption (the last token repeated for short captions), so the LM first sees, in its own
  vocabulary, roughly the words that describe the image. How well that regression does is a
  property of the features -- the comparison the LiMBeR table makes -- and the same procedure is
  applied to every encoder. Gradient training through the frozen LM then continues from there.
  Pooled features only; grid features fall back to "embedding-scale". The L2 strength is
  `ridge`, or, when `ridge_candidates` lists several, the candidate whose fit on a seeded 80 %
  of the images leaves the least unexplained target variance on the other 20 % (`choose_ridge`);
  the chosen strength is then refitted on every image. `init_projector` returns what it chose.

Resumed runs overwrite any of these with their checkpoint; tuned encoders (no cached features)
keep "default".
"""

from __future__ import annotations

import logging

import torch

from vlbridge.errors import UserError

log = logging.getLogger(__name__)

PROJECTOR_INITS = ("embedding-scale", "caption-ridge", "default")


HELD_OUT_FRACTION = 0.2  # share of the images that scores each ridge candidate


def init_projector(model, features: torch.Tensor | None, caption_ids: list[list[list[int]]], config) -> dict:
    """Re-initialise `model.projector` (seeded by config.seed) as `config.projector_init` says.

    Returns what was done: {"init": ...} plus, for a ridge chosen on held-out images, the
    candidates' held-out unexplained variance and the chosen strength.
    """
    if config.projector_init not in PROJECTOR_INITS:
        raise UserError(f"projector_init must be one of {', '.join(PROJECTOR_INITS)}, got {config.projector_init!r}")
    if config.projector_init == "default" or features is None:
        return {"init": "default"}
    report: dict = {"init": config.projector_init}
    features = features.float() * float(getattr(model.projector, "input_scale", 1.0))  # what the projector sees
    word_embeddings = model.lm.model.get_input_embeddings().weight.detach().float()  # (V, H)
    if config.projector_init == "caption-ridge" and model.projector.pooled:
        k = model.projector.num_prefix_tokens
        ridge = config.ridge
        candidates = list(getattr(config, "ridge_candidates", []) or [])
        if len(candidates) > 1:
            ridge, scores = choose_ridge(features.float(), caption_ids, word_embeddings, k, candidates, config.seed)
            report["held_out_unexplained"] = scores
        report["ridge"] = ridge
        weight, bias = caption_ridge(features.float(), caption_ids, word_embeddings, k, ridge)
    else:
        weight, bias = embedding_scale(features.float(), model.projector.proj.weight.shape, word_embeddings, config.seed)
    with torch.no_grad():
        model.projector.proj.weight.copy_(weight)
        model.projector.proj.bias.copy_(bias)
    return report


def choose_ridge(features: torch.Tensor, caption_ids, word_embeddings: torch.Tensor, k: int,
                 candidates: list[float], seed: int) -> tuple[float, dict[str, float]]:
    """(strength with the least held-out unexplained variance, {str(strength): that variance})."""
    if any(not c > 0 for c in candidates):
        raise UserError(f"ridge_candidates must all be > 0, got {candidates}")
    n = features.shape[0]
    n_held = max(1, round(n * HELD_OUT_FRACTION))
    if n - n_held < 2:
        raise UserError(f"choosing the ridge needs at least 3 training images, got {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    held, fit = order[:n_held], order[n_held:]
    targets = caption_targets([caption_ids[i] for i in held], word_embeddings, k).double()  # (n_held, k*H)
    scores = {}
    for strength in candidates:
        weight, bias = caption_ridge(features[fit], [caption_ids[i] for i in fit], word_embeddings, k, strength)
        predicted = features[held].double() @ weight.double().T + bias.double()  # (n_held, k*H)
        centred = targets - targets.mean(dim=0)
        scores[str(strength)] = float(((targets - predicted) ** 2).sum() / (centred**2).sum().clamp_min(1e-12))
    best = min(candidates, key=lambda c: scores[str(c)])
    log.info("caption-ridge: held-out unexplained variance %s -> ridge %g", scores, best)
    return best, scores


def embedding_scale(features: torch.Tensor, shape: torch.Size, word_embeddings: torch.Tensor, seed: int):
    """(W, b): Gaussian W scaled so W x has about the word embeddings' element spread; b = 0."""
    mean_norm = float(features.norm(dim=-1).mean().clamp_min(1e-6))  # over (N[, T]) feature vectors
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=generator) * (float(word_embeddings.std()) / mean_norm)
    return weight, torch.zeros(shape[0])


def caption_targets(caption_ids: list[list[list[int]]], word_embeddings: torch.Tensor, k: int) -> torch.Tensor:
    """(N, k*H): embeddings of the first k tokens of each image's first caption (last one repeated)."""
    rows = []
    for captions in caption_ids:
        ids = captions[0] if captions and captions[0] else [0]
        ids = (list(ids) + [ids[-1]] * k)[:k]
        rows.append(word_embeddings[torch.tensor(ids)].reshape(-1))  # (k*H,)
    return torch.stack(rows)


def caption_ridge(features: torch.Tensor, caption_ids, word_embeddings: torch.Tensor, k: int, ridge: float):
    """(W (k*H, D), b (k*H,)) of centred ridge regression from features to caption-token embeddings."""
    targets = caption_targets(caption_ids, word_embeddings, k).double()  # (N, k*H)
    x = features.double()  # (N, D)
    x_mean, y_mean = x.mean(dim=0), targets.mean(dim=0)
    xc, yc = x - x_mean, targets - y_mean  # (N, D), (N, k*H)
    gram = xc.T @ xc  # (D, D)
    strength = ridge * float(gram.diagonal().mean())  # relative to the mean feature variance (x N)
    coef = torch.linalg.solve(gram + strength * torch.eye(x.shape[1], dtype=x.dtype), xc.T @ yc)  # (D, k*H)
    residual = float(((yc - xc @ coef) ** 2).sum() / (yc**2).sum().clamp_min(1e-12))
    log.info("caption-ridge init: %d images, unexplained target variance %.3f", x.shape[0], residual)
    weight = coef.T.float()  # (k*H, D)
    return weight, (y_mean - coef.T @ x_mean).float()
