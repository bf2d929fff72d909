"""`ClipModel`: a loaded CLIP that embeds images and texts and classifies zero-shot.

    clip = ClipModel.from_pretrained("runs/clip")         # anything vlbridge.models.clip_loading.load_clip reads
    clip.embed_images(["a.png"])                          # (1, E) unit vectors
    clip.embed_texts(["a red circle"])                    # (1, E) unit vectors
    clip.classify("a.png", ["circle", "square"], templates=["a photo of a {}.", "a drawing of a {}."])
        -> [{"label": "circle", "score": 0.91}, {"label": "square", "score": 0.09}]

Classification is the evaluation's zero-shot classifier (`build_classifier`: every label in
every template, unit embeddings averaged per label) scored by cosine similarity times the
CLIP's learned logit scale, softmaxed over the labels: scores are probabilities that sum to 1,
sorted best first. `templates` may also name a template set ("simple", "openai", a file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from vlbridge.api.models import DEFAULT_TEMPLATES, ImageInput, read_image
from vlbridge.errors import BadInputError
from vlbridge.evaluation.templates import PLACEHOLDER, load_templates
from vlbridge.evaluation.zero_shot import build_classifier
from vlbridge.models.bundle import ClipBundle

MAX_LABELS = 1000  # classify() refuses more candidate labels than this in one call
MAX_LABEL_CHARS = 200  # and labels longer than this


class ClipModel:
    """A `ClipBundle` with the calls a user makes: embed images / texts, zero-shot classify."""

    def __init__(self, bundle: ClipBundle, name: str = "clip", source: str = ""):
        self.bundle = bundle  # model + preprocess + tokenizer
        self.name = name  # identity shown by the server (/v1/models)
        self.source = source  # the path it was loaded from ("" when built in memory)
        self._encoder = None  # the image tower as an ImageEncoder, made on first use (identity for indexes)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", arch: str | None = None,
                        name: str | None = None) -> "ClipModel":
        """Load a CLIP run dir / checkpoint / open_clip, OpenAI or HF CLIP file (see `load_clip`); `name`: its id."""
        from vlbridge.models.clip_loading import load_clip

        bundle = load_clip(path, device=device, arch=arch)
        return cls(bundle, name=name or _clip_name(Path(path)), source=str(path))

    @property
    def image_encoder(self):
        """The image tower as a pooled `ImageEncoder` (its encoder_id keys feature caches and indexes)."""
        if self._encoder is None:
            from vlbridge.models.encoders_clip import ClipImageEncoder

            self._encoder = ClipImageEncoder(self.bundle)
        return self._encoder

    @property
    def logit_scale(self) -> float:
        """exp(learned log-temperature), clamped at 100 as in training; 100 when the model has none."""
        scale = getattr(self.bundle.model, "logit_scale", None)
        return min(float(scale.detach().exp()), 100.0) if scale is not None else 100.0

    def embed_images(self, images: Sequence[ImageInput], normalize: bool = True) -> torch.Tensor:
        """(N, E) image embeddings, unit length by default."""
        return self.bundle.embed_images([read_image(image) for image in images], normalize=normalize)

    def embed_texts(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        """(N, E) text embeddings, unit length by default."""
        if isinstance(texts, str):
            raise BadInputError("embed_texts expects a list of strings, got one string; wrap it in a list")
        return self.bundle.embed_texts(list(texts), normalize=normalize)

    def classifier(self, labels: Sequence[str], templates: Sequence[str] | str = DEFAULT_TEMPLATES) -> torch.Tensor:
        """(C, E) zero-shot classifier rows for `labels` (checked) under `templates` (checked)."""
        return build_classifier(self.bundle, check_labels(labels), resolve_templates(templates))

    def classify(self, images: ImageInput | Sequence[ImageInput], labels: Sequence[str],
                 templates: Sequence[str] | str = DEFAULT_TEMPLATES) -> list[dict] | list[list[dict]]:
        """Label probabilities per image, sorted best first; one image -> one list, several -> a list of lists."""
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        labels = check_labels(labels)
        scores = self.scores(self.embed_images(batch), self.classifier(labels, templates))  # (N, C)
        ranked = [rank_labels(labels, row) for row in scores]
        return ranked[0] if single else ranked

    def scores(self, image_embeddings: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
        """(N, C) softmax over labels of logit_scale * cosine(image, label row)."""
        logits = self.logit_scale * image_embeddings.float() @ classifier.float().T  # (N, C)
        return logits.softmax(dim=-1)


def rank_labels(labels: Sequence[str], scores: torch.Tensor) -> list[dict]:
    """[{"label", "score"}] for one image's (C,) scores, best first (ties keep the given order)."""
    order = sorted(range(len(labels)), key=lambda i: -float(scores[i]))
    return [{"label": labels[i], "score": float(scores[i])} for i in order]


def check_labels(labels: Sequence[str]) -> list[str]:
    """Labels stripped; BadInputError for none, blanks, duplicates, too many or too long ones."""
    if isinstance(labels, str) or not isinstance(labels, (list, tuple)):
        raise BadInputError(f"labels must be a list of strings, got {type(labels).__name__}")
    cleaned = [label.strip() if isinstance(label, str) else label for label in labels]
    if not cleaned:
        raise BadInputError("classification needs at least one candidate label, got none")
    if len(cleaned) > MAX_LABELS:
        raise BadInputError(f"at most {MAX_LABELS} labels per request, got {len(cleaned)}")
    for label in cleaned:
        if not isinstance(label, str) or not label:
            raise BadInputError(f"every label must be non-empty text, got {label!r}")
        if len(label) > MAX_LABEL_CHARS:
            raise BadInputError(f"labels are at most {MAX_LABEL_CHARS} characters, got one of {len(label)}")
    duplicates = sorted({label for label in cleaned if cleaned.count(label) > 1})
    if duplicates:
        raise BadInputError(f"labels must be distinct; {duplicates[0]!r} appears more than once")
    return cleaned


def resolve_templates(templates: Sequence[str] | str) -> list[str]:
    """A template set name / file (str) or a list of templates, each holding "{}"."""
    if isinstance(templates, str):
        return load_templates(templates)
    if not isinstance(templates, (list, tuple)) or not templates:
        raise BadInputError("templates must be a non-empty list like ['a photo of a {}.'] or a set name like 'simple'")
    for template in templates:
        if not isinstance(template, str) or PLACEHOLDER not in template:
            raise BadInputError(f"every template must contain {{}} where the label goes, got {template!r}")
    return list(templates)


def _clip_name(path: Path) -> str:
    """A short model id from its path: the run folder's name (or the file's stem)."""
    path = path.resolve()
    return path.name if path.is_dir() else path.stem
