"""`vlbridge vqa`: answer a question about an image with a trained LiMBeR model, few-shot.

    vlbridge vqa photo.png --question "what colour is the circle?" --model runs/limber/model
    vlbridge vqa photo.png --question "..." --model CKPT --shots 4 --support data/shapes/vqa.jsonl
    vlbridge vqa photo.png --question "..." --model CKPT --shots 2 --support FILE --blind

The prompt is `<image> Q: {question} A:` after N solved examples `<image> Q: q A: a` (one
per line) drawn, seeded by --seed, from the support file: a vqa.jsonl as written by
`vlbridge data shapes` (question_id, image_id, image, question, answers, answer_type; the
images under images/ beside it). The prompt layout and shot choice are those of the VQA
evaluation (`vlbridge.evaluation.vqa`). --blind drops every image from the prompt (the
no-image baseline). --template changes the wording: "Question: {question} Answer:" is
Frozen's (solved examples become "Question: q Answer: a"). Prints the answer: the first line
of the generation, stripped.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from vlbridge import jsontext
from vlbridge.commands.caption import add_generation_options, generation_config, load_model, read_images
from vlbridge.errors import BadInputError

if TYPE_CHECKING:
    from vlbridge.data.records import VQARecord

GROUP = None
log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "vqa",
        help="answer a question about an image with a LiMBeR model (few-shot)",
        description=(
            "Answer QUESTION about IMAGE with a LiMBeR model. The prompt is '<image> Q: {question} A:', "
            "preceded by --shots solved examples from the --support vqa.jsonl; --blind removes every image "
            "(language-only baseline). Prints the first line of the answer."
        ),
        epilog='Example: vlbridge vqa img.png --question "how many shapes are there?" --model CKPT --shots 2 --support data/vqa.jsonl',
    )
    parser.add_argument("image", metavar="IMAGE", help="the image the question is about")
    parser.add_argument("--question", required=True, help="the question, e.g. 'what colour is the circle?'")
    parser.add_argument("--shots", type=int, default=0, metavar="N", help="solved examples before the question (default 0)")
    parser.add_argument("--support", metavar="FILE", help="vqa.jsonl to draw the solved examples from (needed with --shots)")
    parser.add_argument("--blind", action="store_true", help="drop all image tokens (no-image baseline)")
    parser.add_argument("--template", default="Q: {question} A:", metavar="TEXT",
                        help="query wording with one {question}; a solved example adds ' {answer}' "
                             "(default 'Q: {question} A:'; Frozen's: 'Question: {question} Answer:')")
    add_generation_options(parser, max_new_tokens=10)
    parser.set_defaults(func=run)


def read_support(path: str | Path) -> list[VQARecord]:
    """VQARecords of a vqa.jsonl; images resolved beside it. Bad lines are skipped and counted."""
    from vlbridge.data.records import SkipCounter, VQARecord

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"support file {path} does not exist; expected a vqa.jsonl from `vlbridge data shapes`")
    skips = SkipCounter(name=str(path))
    records = []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8-sig")
        except UnicodeDecodeError:  # a latin-1 (or other non-UTF-8) line: skipped and counted like a bad one
            skips.skip("non-UTF-8 text", f"line {number}")
            continue
        if not line.strip():
            continue
        try:
            item = jsontext.loads(line)
            image = item.get("image") or f"images/{item['image_id']}.png"
            records.append(
                VQARecord(
                    question_id=str(item["question_id"]),
                    image_id=str(item["image_id"]),
                    image=path.parent / image,
                    question=str(item["question"]),
                    answers=[str(answer) for answer in item["answers"]],
                    answer_type=item.get("answer_type"),
                    split=item.get("split"),
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            skips.skip(f"bad line ({type(err).__name__})", f"line {number}")
    if skips.total:
        log.warning(skips.summary())
    if not records:
        raise BadInputError(f"support file {path} holds no usable VQA lines (question_id, image_id, question, answers)")
    return records


def run(args) -> int:
    from vlbridge.data.records import VQARecord
    from vlbridge.evaluation.vqa import answer_prompts, build_prompt, check_template, choose_shots, fit_shots

    if args.shots < 0:
        raise BadInputError(f"--shots must be >= 0, got {args.shots}")
    if args.shots and not args.support:
        raise BadInputError(f"--shots {args.shots} needs --support FILE (a vqa.jsonl with solved examples)")
    check_template(args.template)
    config = generation_config(args)
    support = read_support(args.support) if args.shots else []
    image = None if args.blind else read_images([args.image])[0]
    query = VQARecord(
        question_id=f"cli:{args.question}", image_id=Path(args.image).stem, image=image, question=args.question, answers=[]
    )
    shots = choose_shots(query, support, args.shots, seed=args.seed)
    if not args.blind:
        read_images([str(shot.image) for shot in shots])  # a clear error for a missing support image
    model = load_model(args, with_encoder=not args.blind)
    if not args.blind and model.encoder is None:
        raise BadInputError(f"checkpoint {args.model} names no image encoder; use --blind or a checkpoint with one")
    model.eval()
    prompt, dropped = fit_shots(model, query, shots, config.max_new_tokens,
                                lambda q, kept: build_prompt(q, kept, blind=args.blind, template=args.template))
    if dropped:
        print(f"warning: {dropped} of {len(shots)} solved examples left out so the prompt fits the LM's context",
              file=sys.stderr)
    print(answer_prompts(model, [prompt], config, batch_size=1)[0])
    return 0
