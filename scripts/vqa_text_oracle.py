"""How much can any projector gain on shapes-world VQA? The frozen LM read with the answer in text.

    .venv/bin/python scripts/vqa_text_oracle.py [--questions 80] [--shots 1 4] [--caption 0]

The study's VQA prompts are asked three ways of the embedded frozen LM (SmolLM2-135M):
- blind: every image removed (the study's blind baseline);
- text oracle: every image replaced by one of its reference captions as text, followed by a
  newline (caption --caption of the scene, 0 = "a large orange circle ..."). A perfect
  projector could at best hand the LM that caption's words;
each under the LiMBeR wording "Q: {question} A:" and Frozen's "Question: {question} Answer:".
Shots, seeds, decoding (greedy, 10 tokens, first line) and the official VQA accuracy are those
of `vlbridge.evaluation.vqa`; questions and the shot pool are chosen by the study's own
`vqa_sets` (a seeded subset of the shapes-world test split; shots from its train split).

Prints accuracy per shot count and per answer type. The gap between the oracle and blind rows
bounds what the image can add through this LM; the study's encoders sit between the two.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vlbridge.data.formats import load_image_text  # noqa: E402
from vlbridge.evaluation import vqa  # noqa: E402
from vlbridge.models.generation import GenerationConfig  # noqa: E402
from vlbridge.models.lm import FrozenLM, default_lm_path  # noqa: E402
from vlbridge.study.config import StudyConfig  # noqa: E402
from vlbridge.study.limber_stages import vqa_sets  # noqa: E402

TEMPLATES = {"Q: A:": vqa.QUESTION_TEMPLATE, "Question: Answer:": vqa.FROZEN_TEMPLATE}


class TextOnlyModel:
    """The LiMBeR generation interface over a bare LM: every prompt segment is text."""

    def __init__(self, lm: FrozenLM):
        self.lm = lm
        self.device = lm.device

    def embed_segments(self, prompts):
        return [list(prompt) for prompt in prompts]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=80, help="questions asked (seeded subset; default 80)")
    parser.add_argument("--scenes", type=int, default=40, help="shapes-world test scenes the questions come from")
    parser.add_argument("--support", type=int, default=100, help="train scenes the shots come from")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 4], help="shot counts (default 1 4)")
    parser.add_argument("--caption", type=int, default=0, help="which of a scene's captions the oracle reads")
    parser.add_argument("--seed", type=int, default=0, help="question subset and shot choice")
    return parser.parse_args(argv)


def questions(args) -> tuple[list, list, dict[str, str]]:
    """(queries, support, caption by image id): the study's own question subset and shot pool."""
    specs = (f"shapes?split=test&n={args.scenes}", f"shapes?split=train&n={args.support}")
    config = StudyConfig(seed=args.seed)
    config.limber = replace(config.limber, vqa_queries=specs[0], vqa_max_questions=args.questions, vqa_support=specs[1])
    queries, support = vqa_sets(config)
    captions = {}
    for spec in specs:
        captions.update({r.id: r.captions[min(args.caption, len(r.captions) - 1)] for r in load_image_text(spec)})
    return queries, support, captions


def oracle_prompt(prompt: vqa.VQAPrompt, captions: dict[str, str]) -> vqa.VQAPrompt:
    """The prompt with each image segment replaced by its caption and a newline, as text."""
    return [vqa.TextSegment(captions[s.image_id] + "\n") if isinstance(s, vqa.ImageSegment) else s for s in prompt]


def accuracy(model, queries, support, captions, n_shots: int, template: str, mode: str, seed: int) -> dict:
    prompts = []
    for query in queries:
        prompt = vqa.build_prompt(query, vqa.choose_shots(query, support, n_shots, seed), blind=mode == "blind",
                                  template=template)
        prompts.append(oracle_prompt(prompt, captions) if mode == "oracle" else prompt)
    answers = vqa.answer_prompts(model, prompts, GenerationConfig(max_new_tokens=10), batch_size=32, show=False)
    return vqa.score_answers(queries, answers)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    model = TextOnlyModel(FrozenLM.from_pretrained(default_lm_path()))
    queries, support, captions = questions(args)
    print(f"{len(queries)} questions, shots {args.shots}, oracle reads caption {args.caption}")
    for name, template in TEMPLATES.items():
        for mode in ("blind", "oracle"):
            for n_shots in args.shots:
                scores = accuracy(model, queries, support, captions, n_shots, template, mode, args.seed)
                by_type = {k: round(v["accuracy"], 2) for k, v in sorted(scores.get("by_answer_type", {}).items())}
                print(f"{name:18s} {mode:6s} {n_shots}-shot  {scores['accuracy']:.3f}  {by_type}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
