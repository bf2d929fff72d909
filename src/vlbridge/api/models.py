"""Trained models as Python objects: load once, then caption, answer, embed and classify.

    import vlbridge
    limber = vlbridge.load("runs/limber")                # a LiMBeR run dir or its model/ folder
    limber.caption(["a.png", "b.png"])                   # ["a red circle ...", "..."]
    limber.answer("a.png", "what colour is the circle?", shots=[("b.png", "how many shapes?", "two")])
    clip = vlbridge.load("runs/clip")                    # any CLIP `load_clip` reads
    clip.classify("a.png", ["circle", "square"])         # [{"label": "circle", "score": 0.93}, ...]
    clip.embed_texts(["a red circle"])                   # (1, E) unit vectors

`LimberModel` and `ClipModel` wrap the existing loaders (`load_trained_limber`, `load_clip`)
and decoders (`answer_questions`); the CLI, the server and notebooks all use these objects, so
a caption is the same whichever way it was asked for. Images may be file paths (str or Path),
encoded bytes or PIL images. Decoding options are `GenerationConfig` fields given as keywords
(`max_new_tokens=10, strategy="beam"`). Prompts follow the evaluation's layouts: a caption is
`<image> {prompt}`, a question is the few-shot VQA prompt of `vlbridge.evaluation.vqa`.

Batched work encodes every image of the batch in one encoder call, then decodes every prompt
together (left-padded), so `caption([a, b])` equals `[caption(a), caption(b)]` up to float noise.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Sequence, Union

import torch
from PIL import Image

from vlbridge.data.records import BadImage, open_image
from vlbridge.errors import BadInputError, UserError
from vlbridge.models.generation import GenerationConfig, answer_questions
from vlbridge.models.limber import CONFIG_FILE, TUNED_ENCODER_FILE, Limber, load_trained_limber

log = logging.getLogger(__name__)

ImageInput = Union[str, Path, bytes, bytearray, Image.Image]  # what the API accepts as an image
DEFAULT_TEMPLATES = ("a photo of a {}.",)  # zero-shot templates when none are given (CLIP's plain prompt)
GENERATION_FIELDS = tuple(field.name for field in dataclasses.fields(GenerationConfig))


def read_image(image: ImageInput) -> Image.Image:
    """An RGB PIL image from a path, encoded bytes or a PIL image; BadInputError in one line otherwise."""
    if isinstance(image, str):
        image = Path(image)
    if not isinstance(image, (Path, bytes, bytearray, Image.Image)):
        raise BadInputError(f"an image must be a file path, encoded bytes or a PIL image, got {type(image).__name__}")
    try:
        return open_image(bytes(image) if isinstance(image, bytearray) else image)
    except BadImage as err:
        raise BadInputError(f"{err}; expected a readable image (PNG, JPEG, ...)") from err


def generation_config(config: GenerationConfig | None = None, **options: Any) -> GenerationConfig:
    """`config` (default: greedy, 30 tokens) with `options` (GenerationConfig field names) applied, validated."""
    unknown = sorted(set(options) - set(GENERATION_FIELDS))
    if unknown:
        raise UserError(f"unknown decoding option {unknown[0]!r}; known: {', '.join(GENERATION_FIELDS)}")
    config = dataclasses.replace(config or GenerationConfig(), **options)
    config.validate()
    return config


def is_limber_dir(path: str | Path) -> bool:
    """True for a LiMBeR checkpoint folder (limber.yaml) or a run dir holding one under model/."""
    path = Path(path)
    return (path / CONFIG_FILE).is_file() or (path / "model" / CONFIG_FILE).is_file()


class LimberModel:
    """A loaded LiMBeR (encoder + projector + frozen LM): caption images and answer questions."""

    def __init__(self, model: Limber, name: str = "limber", tuned_encoder: bool = False):
        self.model = model.eval()  # the underlying vlbridge.models.limber.Limber
        self.name = name  # identity shown by the server (/v1/models) and in logs
        self.tuned_encoder = tuned_encoder  # the encoder's weights were tuned (saved beside the projector)

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", with_encoder: bool = True,
                        name: str | None = None) -> "LimberModel":
        """Load a `train limber` run dir, its model/ folder, or a study projector folder (`name`: its id, default the folder's)."""
        folder = Path(path)
        if not is_limber_dir(folder):
            raise UserError(f"{path} is not a LiMBeR model: expected a folder with {CONFIG_FILE} (or model/{CONFIG_FILE})")
        model = load_trained_limber(folder, device=device, with_encoder=with_encoder)
        model_dir = folder / "model" if (folder / "model" / CONFIG_FILE).is_file() else folder
        tuned = with_encoder and (model_dir / TUNED_ENCODER_FILE).is_file()
        return cls(model, name=name or _model_name(folder), tuned_encoder=tuned)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write projector.safetensors + limber.yaml (+ encoder.safetensors if tuned) into `path`."""
        from vlbridge.io import atomic_save_safetensors

        folder = self.model.save(path)
        if self.tuned_encoder and self.model.encoder is not None:
            state = {name: tensor.contiguous() for name, tensor in self.model.encoder.state_dict().items()}
            atomic_save_safetensors(folder / TUNED_ENCODER_FILE, state)
        return folder

    @property
    def prompt(self) -> str:
        """The captioning prompt the model was trained with ("A picture of" by default)."""
        return self.model.config.prompt

    # ------------------------------------------------------------------ features
    @torch.no_grad()
    def image_features(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Encoder features of the images in one batch: (B, D) pooled or (B, N, D) grid."""
        encoder = self.model.encoder
        if encoder is None:
            raise UserError(f"LiMBeR model {self.name} has no image encoder, so it cannot read images")
        pixels = torch.stack([encoder.preprocess(read_image(image)) for image in images])  # (B, 3, H, W)
        return self.model.encode(pixels)

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: Sequence[Sequence[Any]], config: GenerationConfig | None = None) -> list[str]:
        """First line of the generation for each prompt (a list of str text / image segments), batched.

        Every image of every prompt goes through the encoder in one call; then all prompts decode together.
        """
        config = config or GenerationConfig()
        if not prompts:
            return []
        images = [segment for prompt in prompts for segment in prompt if not isinstance(segment, (str, torch.Tensor))]
        features = iter(self.image_features(images).unbind(0)) if images else iter(())
        rows = [[s if isinstance(s, (str, torch.Tensor)) else next(features) for s in prompt] for prompt in prompts]
        return answer_questions(self.model, rows, config)

    def caption_prompt(self, image: ImageInput, prompt: str | None = None) -> list:
        """The segments of a caption request: `<image> {prompt}` (the model's prompt by default)."""
        text = self.prompt if prompt is None else prompt
        image = Path(image) if isinstance(image, str) else image  # a str segment would be read as text
        return [image, text] if text else [image]

    def question_prompt(self, image: ImageInput | None, question: str, shots: Sequence = (), template: str | None = None) -> list:
        """The segments of a few-shot question, laid out as `vlbridge.evaluation.vqa.build_prompt` does.

        `shots` holds solved examples as (image, question, answer) tuples or dicts with those keys;
        `image=None` asks blind (no image segments at all).
        """
        from vlbridge.evaluation.vqa import QUESTION_TEMPLATE, build_prompt, model_segments
        from vlbridge.data.records import VQARecord

        if not question or not question.strip():
            raise BadInputError("a question must be non-empty text")
        solved = [_shot_record(number, shot) for number, shot in enumerate(shots)]
        query = VQARecord(question_id="query", image_id="query", image=image, question=question, answers=[])
        segments = build_prompt(query, solved, blind=image is None, template=template or QUESTION_TEMPLATE)
        return model_segments(segments)

    def caption(self, images: ImageInput | Sequence[ImageInput], prompt: str | None = None,
                config: GenerationConfig | None = None, **options: Any) -> str | list[str]:
        """Caption one image (returns str) or a list of images (returns a list, same order)."""
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        config = generation_config(config, **options)
        captions = self.generate([self.caption_prompt(image, prompt) for image in batch], config)
        return captions[0] if single else captions

    def answer(self, image: ImageInput | None, question: str, shots: Sequence = (), template: str | None = None,
               config: GenerationConfig | None = None, **options: Any) -> str:
        """Answer `question` about `image` after the solved `shots`; greedy, 10 tokens unless told otherwise."""
        options.setdefault("max_new_tokens", 10)
        config = generation_config(config, **options)
        return self.generate([self.question_prompt(image, question, shots, template)], config)[0]


def _shot_record(number: int, shot):
    """A solved example as a VQARecord (its one answer shown after the question)."""
    from vlbridge.data.records import VQARecord

    if isinstance(shot, dict):
        missing = sorted({"image", "question", "answer"} - set(shot))
        if missing:
            raise BadInputError(f"shot {number} needs image, question and answer; missing {', '.join(missing)}")
        image, question, answer = shot["image"], shot["question"], shot["answer"]
    elif isinstance(shot, (list, tuple)) and len(shot) == 3:
        image, question, answer = shot
    else:
        raise BadInputError(f"shot {number} must be (image, question, answer) or a dict with those keys, got {shot!r:.80}")
    if not str(question).strip() or not str(answer).strip():
        raise BadInputError(f"shot {number} needs a non-empty question and answer")
    return VQARecord(question_id=f"shot-{number}", image_id=f"shot-{number}", image=image,
                     question=str(question), answers=[str(answer)])


def _model_name(folder: Path) -> str:
    """A short model id from its folder: ".../projector/clip-1a2b/model" -> "clip-1a2b"."""
    folder = folder.resolve()
    return folder.parent.name if folder.name == "model" else folder.name
