"""`vlbridge score captions|vqa|clip`: score generated captions and VQA answers from files.

- `score captions FILE [--tokenize ptb|none] [--out OUT.json]`, FILE = {"refs", "cands", "domains"?},
  or `--coco-annotations A.json --coco-results R.json` (COCO / NoCaps files).
- `score vqa FILE [--out OUT.json]`, FILE = {"items": [{"id", "pred", "answers", "answer_type"?}]},
  or `--annotations A --results R [--questions Q]` (official VQA v2 files).
- `score clip --images DIR|FILES --captions FILE --model CLIP`: CLIP-S / RefCLIP-S.
Prints a short table; `--out` writes the full result (per-image scores included) as JSON.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vlbridge.errors import UserError
from vlbridge.io import atomic_write_json

GROUP = "score"

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def register(subparsers: argparse._SubParsersAction) -> None:
    captions = subparsers.add_parser(
        "captions",
        help="CIDEr-D, BLEU-1..4 and ROUGE-L of captions (pycocoevalcap-exact)",
        description="Score candidate captions against references. CIDEr-D is on pycocoevalcap's x10 scale. "
        "With domains (or NoCaps annotation files) every domain is also scored with its own document frequencies.",
    )
    captions.add_argument("file", nargs="?", help='JSON {"refs": {id: [str]}, "cands": {id: str}, "domains": {id: str}}')
    captions.add_argument("--coco-annotations", help="COCO captions annotation file (instead of FILE)")
    captions.add_argument("--coco-results", help="COCO results file [{image_id, caption}] (with --coco-annotations)")
    captions.add_argument("--tokenize", choices=["ptb", "none"], default="ptb", help="ptb: coco-caption PTB pipeline (default); none: the raw strings, each metric splitting them as pycocoevalcap does")
    captions.add_argument("--out", help="write the full result as JSON here")
    captions.set_defaults(func=run_captions, out_kind="file")  # --out is one JSON file

    vqa = subparsers.add_parser(
        "vqa",
        help="official VQA v2 accuracy of predicted answers",
        description="VQA accuracy exactly as the official VQA v2 evaluation script (normalisation, 10 leave-one-out subsets).",
    )
    vqa.add_argument("file", nargs="?", help='JSON {"items": [{"id", "pred", "answers": [10 str], "answer_type"?}]}')
    vqa.add_argument("--annotations", help="official VQA v2 annotations file (instead of FILE)")
    vqa.add_argument("--results", help="official VQA v2 results file [{question_id, answer}]")
    vqa.add_argument("--questions", help="official VQA v2 questions file (optional cross-check)")
    vqa.add_argument("--out", help="write the full result as JSON here")
    vqa.set_defaults(func=run_vqa, out_kind="file")

    clip = subparsers.add_parser(
        "clip",
        help="CLIP-S and RefCLIP-S of captions with a CLIP model",
        description="CLIP-S (Hessel et al. 2021) of each candidate against its image, and RefCLIP-S when references are given.",
    )
    clip.add_argument("--images", nargs="+", required=True, help="a directory of images named <id>.<ext>, or image files")
    clip.add_argument("--captions", required=True, help='JSON {"cands": {id: str}, "refs"?: {id: [str]}}')
    clip.add_argument("--model", required=True, help="CLIP to score with (any spec vlbridge.models.clip_loading.load_clip accepts)")
    clip.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    clip.add_argument("--batch-size", type=int, default=64, help="images/texts per forward pass (default 64)")
    clip.add_argument("--out", help="write the full result as JSON here")
    clip.set_defaults(func=run_clip, out_kind="file")


def run_captions(args: argparse.Namespace) -> int:
    from vlbridge.evaluation.metrics import io

    if bool(args.file) == bool(args.coco_annotations or args.coco_results):
        raise UserError("give either FILE or both --coco-annotations and --coco-results")
    if args.file:
        refs, cands, domains = io.load_caption_file(args.file)
    else:
        if not (args.coco_annotations and args.coco_results):
            raise UserError("--coco-annotations and --coco-results go together")
        refs, cands, domains = io.load_coco_captions(args.coco_annotations, args.coco_results)
    result = io.score_captions(refs, cands, tokenize=args.tokenize, domains=domains)
    rows = {"all": result["corpus"], **{d: m for d, m in result.get("by_domain", {}).items() if d != "entire"}}
    print(f"{result['num_images']} images, tokenize={result['tokenize']}" + (", df per domain" if "by_domain" in result else ""))
    _print_table(rows, list(io.CAPTION_METRICS))
    _write(args.out, result)
    return 0


def run_vqa(args: argparse.Namespace) -> int:
    from vlbridge.evaluation.metrics import io
    from vlbridge.evaluation.metrics.vqa_accuracy import vqa_accuracy

    if bool(args.file) == bool(args.annotations or args.results or args.questions):
        raise UserError("give either FILE or --annotations and --results (and optionally --questions)")
    if args.file:
        items = io.load_vqa_file(args.file)
    else:
        if not (args.annotations and args.results):
            raise UserError("--annotations and --results go together")
        items = io.load_vqav2_official(args.annotations, args.results, args.questions)
    result = vqa_accuracy(items)
    print(f"{len(items)} questions: accuracy {result['accuracy_percent']:.2f}")
    for answer_type, summary in result.get("by_answer_type", {}).items():
        print(f"  {answer_type:<12} {summary['accuracy_percent']:6.2f}  ({summary['count']})")
    _write(args.out, result)
    return 0


def run_clip(args: argparse.Namespace) -> int:
    from vlbridge.evaluation.metrics import io
    from vlbridge.evaluation.metrics.clip_score import clip_score

    data = io.read_json(args.captions, "captions")
    if not isinstance(data, dict) or not isinstance(data.get("cands"), dict):
        raise UserError(f"captions file {args.captions} must hold an object with 'cands' {{id: caption}} (and optional 'refs')")
    cands, refs = data["cands"], data.get("refs")
    if refs is not None:
        io.check_captions(refs, cands)
    elif not all(isinstance(c, str) for c in cands.values()):
        raise UserError(f"every candidate in {args.captions} must be a string")
    images = _find_images(args.images)
    missing = [k for k in cands if k not in images]
    if missing:
        raise UserError(f"{len(missing)} candidate(s) have no image, e.g. id {missing[0]!r} (images are matched by file name stem)")
    from vlbridge.models.clip_loading import load_clip

    bundle = load_clip(args.model, device=args.device)
    ids = list(cands)
    references = [refs[k] for k in ids] if refs is not None else None
    result = clip_score(bundle, [images[k] for k in ids], [cands[k] for k in ids], references, ids, args.batch_size)
    print(f"{len(ids)} images scored with {result['scorer']}")
    _print_table({"all": {"CLIP-S": result["CLIP-S"], "RefCLIP-S": result["RefCLIP-S"]}}, ["CLIP-S", "RefCLIP-S"])
    _write(args.out, result)
    return 0


def _find_images(paths: list[str]) -> dict[str, Path]:
    """{id: path}: files of the given directories (id = file stem) and the given files."""
    found: dict[str, Path] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = [p for p in sorted(path.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        elif path.is_file():
            files = [path]
        else:
            raise UserError(f"image path {path} does not exist")
        for file in files:
            if file.stem in found:
                raise UserError(f"two images share the id {file.stem!r}: {found[file.stem]} and {file}")
            found[file.stem] = file
    return found


def _print_table(rows: dict[str, dict[str, Any]], metrics: list[str]) -> None:
    print(f"{'':<12}" + "".join(f"{m:>10}" for m in metrics))
    for name, values in rows.items():
        cells = "".join(f"{values[m]:>10.4f}" if values.get(m) is not None else f"{'-':>10}" for m in metrics)
        print(f"{name:<12}{cells}")


def _write(path: str | None, result: dict[str, Any]) -> None:
    if path:
        out = Path(path)
        atomic_write_json(out, result)
        print(f"wrote {out}")
