"""Few-shot VQA protocol for LiMBeR: prompt building, seeded shot choice, blind baseline, scoring.

A prompt (`VQAPrompt`) is a list of segments, each either an `ImageSegment` (replaced by the
image's projected prefix: k vectors for pooled features, N for grid features) or a
`TextSegment`. `vlbridge.models.generation.answer_questions(model, prompts, config)` turns
them into `inputs_embeds` and generates; this module decides what goes into them.

Choices (LiMBeR / MAGMA style, fixed so every encoder is compared on identical prompts):
- Shot layout: `<image> "Q: {question} A: {answer}\n"` per solved example, then the query
  `<image> "Q: {question} A:"` (LiMBeR / MAGMA). The query text is a template
  (`VQAEvalConfig.template`, default `QUESTION_TEMPLATE`); a solved example is the same
  template followed by " {answer}" and the separator, so `"Question: {question} Answer:"`
  (Frozen's wording) changes both. `SHOT_SEPARATOR` ("\n") ends every solved example: the
  model sees that an answer ends at a line break, and generation stops at the first
  newline (answers are the first line of the output anyway). No separator sits between an
  image and its text.
- Text is tokenized without special tokens (`FrozenLM.tokenize`); consecutive text segments
  are joined before tokenizing (`vlbridge.models.limber.build_prompt_embeds`), so a blind
  prompt is exactly the tokenization of its joined text, and a seeing prompt is the
  tokenization of each text run between images. LMs that expect a BOS get it first.
- The answer shown for a solved example is the most common of its 10 human answers (after
  stripping; ties go to the answer that occurs first in the list).
- Shot choice is seeded per question: a numpy Generator seeded from sha256(f"{seed}:
  {question_id}") permutes the support split; walking that order, an item is skipped if
  it shows the query's own image or an image already used as a shot. The first `n` kept
  items are the shots, so the 1-shot example is the first of the 2-shot ones, and so on
  (shot counts differ only in how many examples are shown). Same seed -> same shots,
  whatever other questions are evaluated.
- Context length: a prompt whose shots would not leave room for the answer within the LM's
  positions loses its oldest solved examples first (`fit_shots`), with a warning that counts
  them; a query that does not fit even alone is refused by generation with a one-line error.
- Blind baseline: the very same prompts with every `ImageSegment` removed (no image
  embeddings at all, not zeros); the text segments are unchanged.
- Answers: greedy decoding (at most 10 new tokens by default), first line of the generated
  text, stripped; scored with the official VQA v2 accuracy
  (`vlbridge.evaluation.metrics.vqa_accuracy`), overall and per answer type.
- Images: `features` maps image ids to cached features (e.g. `FeatureStore.get_or_extract`
  on the VQA records, which keys them by image id); questions and support items whose image
  has no features (unreadable, skipped by the store) are left out and counted in the log.
  Without `features` the encoder runs on pixels.
- Under torchrun each rank answers every world_size-th question; answers are gathered and
  every rank returns the same scores.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from vlbridge.data.records import ImageRef, VQARecord
from vlbridge.errors import UserError
from vlbridge.runtime import DistEnv, gather_objects

log = logging.getLogger(__name__)

SHOT_COUNTS = (0, 1, 2, 4)  # the few-shot settings of the LiMBeR paper
SHOT_SEPARATOR = "\n"  # ends every solved example (see module docstring)
QUESTION_TEMPLATE = "Q: {question} A:"  # the query text after its image (LiMBeR / MAGMA)
FROZEN_TEMPLATE = "Question: {question} Answer:"  # Frozen's wording (the embedded study's choice)


def check_template(template: str) -> str:
    """`template` if it holds "{question}" exactly once and no other field; else a UserError."""
    rest = template.replace("{question}", "", 1)
    if "{question}" not in template or "{" in rest or "}" in rest:
        raise UserError(f"a VQA template needs exactly one {{question}} and no other braces, got {template!r}")
    return template


def shot_text(template: str, question: str, answer: str) -> str:
    """One solved example's text: the query template, " {answer}", then SHOT_SEPARATOR."""
    return template.format(question=question) + f" {answer}" + SHOT_SEPARATOR


@dataclass(frozen=True)
class ImageSegment:
    """An image slot in a prompt; replaced by the projected image prefix."""

    image_id: str  # which image (features are looked up / cached under this id)
    image: ImageRef | None = field(default=None, compare=False)  # pixels, when features are not given
    features: torch.Tensor | None = field(default=None, compare=False)  # cached (D,) or (N, D) features


@dataclass(frozen=True)
class TextSegment:
    """A piece of text in a prompt, tokenized on its own (no BOS)."""

    text: str


Segment = Union[ImageSegment, TextSegment]
VQAPrompt = list[Segment]  # segments in prompt order


def majority_answer(answers: Sequence[str]) -> str:
    """The most common answer after stripping; ties go to the one that occurs first."""
    stripped = [answer.strip() for answer in answers]
    if not stripped:
        raise UserError("a VQA support item has no answers; expected 10 human answers")
    return Counter(stripped).most_common(1)[0][0]


def first_line(text: str) -> str:
    """The answer in a generation: its first line, stripped ("" for empty output)."""
    return text.split("\n", 1)[0].strip()


def shot_rng(seed: int, question_id: str) -> np.random.Generator:
    """A Generator that depends only on (seed, question id), stable across runs and machines."""
    digest = hashlib.sha256(f"{seed}:{question_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def choose_shots(query: VQARecord, support: Sequence[VQARecord], n_shots: int, seed: int = 0) -> list[VQARecord]:
    """`n_shots` solved examples for `query`, drawn from `support` (see the module docstring)."""
    if n_shots == 0:
        return []
    used_images = {query.image_id}
    shots: list[VQARecord] = []
    for index in shot_rng(seed, query.question_id).permutation(len(support)):
        candidate = support[int(index)]
        if candidate.image_id in used_images:
            continue
        shots.append(candidate)
        used_images.add(candidate.image_id)
        if len(shots) == n_shots:
            return shots
    raise UserError(
        f"the support split has only {len(shots)} usable images for question {query.question_id!r}; "
        f"{n_shots} shots need {n_shots} images other than the query's"
    )


def image_segment(record: VQARecord, features: dict[str, torch.Tensor] | None) -> ImageSegment:
    """The image slot of `record`, carrying its cached features when `features` has them."""
    cached = None if features is None else features.get(record.image_id)
    if features is not None and cached is None:
        raise UserError(f"no cached features for image {record.image_id!r}; extract features for every image")
    return ImageSegment(image_id=record.image_id, image=record.image, features=cached)


def build_prompt(
    query: VQARecord,
    shots: Sequence[VQARecord],
    features: dict[str, torch.Tensor] | None = None,
    blind: bool = False,
    template: str = QUESTION_TEMPLATE,
) -> VQAPrompt:
    """[<img> "Q: q A: a\\n"]* <img> "Q: q A:" (in `template`'s words); `blind` drops every image segment."""
    check_template(template)
    segments: VQAPrompt = []
    for shot in shots:
        if not blind:
            segments.append(image_segment(shot, features))
        segments.append(TextSegment(shot_text(template, shot.question.strip(), majority_answer(shot.answers))))
    if not blind:
        segments.append(image_segment(query, features))
    segments.append(TextSegment(template.format(question=query.question.strip())))
    return segments


def prompt_positions(model, prompt: VQAPrompt) -> int:
    """Positions `prompt` takes in the LM: [BOS], each image's prefix, the tokens of each run of text."""
    count, text = (1 if model.lm.prepend_bos else 0), ""
    for segment in prompt:
        if isinstance(segment, TextSegment):
            text += segment.text  # consecutive texts are tokenized as one piece, as embed_prompt does
            continue
        count += (len(model.lm.tokenize([text])[0]) if text else 0) + model.num_prefix_tokens
        text = ""
    return count + (len(model.lm.tokenize([text])[0]) if text else 0)


def fit_shots(model, query: VQARecord, shots: Sequence[VQARecord], new_tokens: int, build) -> tuple[VQAPrompt, int]:
    """`build(query, shots)` with the oldest shots dropped until the prompt and `new_tokens` fit the LM's
    positions: (prompt, shots dropped). A prompt that does not fit even with no shots is returned as
    is; generation then refuses it with a one-line error."""
    from vlbridge.models.generation import max_positions

    limit = max_positions(model.lm)
    kept = list(shots)
    prompt = build(query, kept)
    while limit is not None and kept and prompt_positions(model, prompt) + new_tokens > limit:
        kept = kept[1:]
        prompt = build(query, kept)
    return prompt, len(shots) - len(kept)


def warn_dropped_shots(dropped: int, prompts: int, n_shots: int) -> None:
    if dropped:
        log.warning("VQA %d-shot: %d solved example(s) dropped from %d prompt(s) so they fit the LM's context",
                    n_shots, dropped, prompts)


@dataclass
class VQAEvalConfig:
    """How the few-shot VQA protocol runs."""

    shots: tuple[int, ...] = SHOT_COUNTS  # shot counts to evaluate
    seed: int = 0  # seeds the per-question shot choice
    blind: bool = False  # True: the no-image baseline (same prompts, no image segments)
    batch_size: int = 16  # prompts generated together
    template: str = QUESTION_TEMPLATE  # query text; a shot is this + " {answer}\n" (FROZEN_TEMPLATE: "Question: ... Answer:")


def model_segments(prompt: VQAPrompt) -> list:
    """The prompt in `Limber.embed_segments` terms: text -> str, image -> its features or image."""
    out: list = []
    for segment in prompt:
        if isinstance(segment, TextSegment):
            out.append(segment.text)
        elif segment.features is not None:
            out.append(segment.features)
        elif isinstance(segment.image, (str, Path)):
            out.append(Path(segment.image))  # a str would be read as text
        elif segment.image is not None:
            out.append(segment.image)
        else:
            raise UserError(f"image segment {segment.image_id!r} has neither features nor an image")
    return out


def answer_prompts(
    model, prompts: Sequence[VQAPrompt], generation, batch_size: int, desc: str = "vqa", show: bool = True
) -> list[str]:
    """Generate answers for `prompts` in batches; each is the first line of its output, stripped."""
    from vlbridge.models.generation import answer_questions

    answers: list[str] = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc=desc, disable=not show or len(starts) < 2, leave=False):
        chunk = [model_segments(prompt) for prompt in prompts[start : start + batch_size]]
        answers.extend(first_line(text) for text in answer_questions(model, chunk, generation))
    return answers


def score_answers(queries: Sequence[VQARecord], predictions: Sequence[str]) -> dict:
    """Official VQA accuracy of `predictions` for `queries` (overall + per answer type)."""
    from vlbridge.evaluation.metrics.vqa_accuracy import vqa_accuracy

    items = [
        {"id": q.question_id, "pred": pred, "answers": list(q.answers), "answer_type": q.answer_type}
        for q, pred in zip(queries, predictions, strict=True)
    ]
    return vqa_accuracy(items)


def evaluate_vqa(
    model,
    queries: Sequence[VQARecord],
    support: Sequence[VQARecord],
    config: VQAEvalConfig | None = None,
    generation=None,
    features: dict[str, torch.Tensor] | None = None,
    env: DistEnv | None = None,
) -> dict:
    """Few-shot VQA accuracy per shot count: {"0": acc, "1": ..., "by_answer_type": {...}, "samples": {...}}.

    `features` maps image ids to cached encoder features (queries and support); without it
    the model's encoder runs on the images. `generation` is a GenerationConfig (greedy by default).
    """
    config = config or VQAEvalConfig()
    generation = generation or _default_generation()
    if features is not None and not config.blind:
        queries, support = with_features(queries, features, "questions"), with_features(support, features, "support items")
    if not queries:
        raise UserError("no VQA questions to evaluate")
    result: dict = {"by_answer_type": {}, "samples": {}}
    for n_shots in config.shots:
        build = partial(_build, features=features, blind=config.blind, template=config.template)
        fitted = [fit_shots(model, q, choose_shots(q, support, n_shots, config.seed), generation.max_new_tokens, build)
                  for q in queries]
        prompts = [prompt for prompt, _ in fitted]
        warn_dropped_shots(sum(dropped for _, dropped in fitted), sum(1 for _, d in fitted if d), n_shots)
        predictions = sharded_answers(model, prompts, generation, config.batch_size, f"vqa {n_shots}-shot", env)
        scores = score_answers(queries, predictions)
        by_type = scores.get("by_answer_type", {})
        result[str(n_shots)] = scores["accuracy"]
        result["by_answer_type"][str(n_shots)] = {name: entry["accuracy"] for name, entry in by_type.items()}
        result["samples"][str(n_shots)] = [
            {"question_id": q.question_id, "question": q.question, "prediction": p, "answers": list(q.answers)}
            for q, p in zip(queries, predictions)
        ]
        log.info("VQA %d-shot%s accuracy %.4f", n_shots, " (blind)" if config.blind else "", scores["accuracy"])
    return result


def _build(query: VQARecord, shots: Sequence[VQARecord], features, blind: bool, template: str) -> VQAPrompt:
    return build_prompt(query, shots, features, blind, template)


def with_features(records: Sequence[VQARecord], features: dict[str, torch.Tensor], what: str) -> list[VQARecord]:
    """The records whose image has cached features (the FeatureStore skips unreadable images)."""
    kept = [record for record in records if record.image_id in features]
    if len(kept) < len(records):
        log.warning("VQA: %d %s left out: their image has no features (unreadable?)", len(records) - len(kept), what)
    return kept


def sharded_answers(model, prompts: Sequence[VQAPrompt], generation, batch_size: int, desc: str, env: DistEnv | None) -> list[str]:
    """Answers to every prompt, each rank answering every world_size-th one; gathered in prompt order."""
    env = env or DistEnv()
    mine = list(range(env.rank, len(prompts), env.world_size))
    answers = answer_prompts(model, [prompts[i] for i in mine], generation, batch_size, desc, show=env.is_main)
    merged: list[str] = [""] * len(prompts)
    for part in gather_objects(list(zip(mine, answers)), env):
        for index, answer in part:
            merged[index] = answer
    return merged


def _default_generation():
    from vlbridge.models.generation import GenerationConfig

    return GenerationConfig(max_new_tokens=10)
