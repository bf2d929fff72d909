"""`vlbridge eval zeroshot|probe|retrieval|robustness`: evaluate a CLIP on a dataset.

Each sub-command loads the CLIP named by --model through `vlbridge.models.clip_loading.load_clip`
(imported lazily), resolves --dataset with the one resolver (`vlbridge.data.datasets.load_dataset`),
reads the CLIP's image features through the FeatureStore (--cache; the same entries the study and
`vlbridge extract` use, so a repeated evaluation encodes nothing), runs the pure evaluation
functions of `vlbridge.evaluation`, prints a short table and, with --out, writes every number as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

# Only torch-free modules at the top (what --help shows); the evaluation code, data and models,
# which import torch, are imported by the functions that run a command.
from vlbridge.errors import UserError
from vlbridge.evaluation.dataset_help import DATASET_HELP
from vlbridge.evaluation.probe_config import ProbeConfig
from vlbridge.evaluation.templates import builtin_template_names
from vlbridge.io import atomic_write_text

if TYPE_CHECKING:
    from vlbridge.data import datasets

GROUP = "eval"
log = logging.getLogger(__name__)

MODEL_HELP = (
    "the CLIP to evaluate: anything load_clip accepts - a vlbridge CLIP checkpoint or run directory, "
    "an open_clip/OpenAI checkpoint file (give its architecture with --arch), or a Hugging Face CLIPModel "
    "directory. Only local files are read, nothing is downloaded."
)
EPILOG = """\
datasets: {datasets}
  shapes: held-out single-object shapes-world images (52 colour-shape classes); without --n
  520 test / 2080 train images; the command picks the split, so a DATASET spec holds no split=
  retrieval also reads every image-text spec (folder:, csv:, jsonl:, coco:, nocaps:, wds:)
examples:
  vlbridge eval zeroshot --model runs/clip --dataset shapes --templates openai --out zs.json
  vlbridge eval probe --model ViT-B-32.pt --arch ViT-B-32 --dataset fashion-mnist --n 2000 --n-train 5000
  vlbridge eval robustness --model runs/clip --dataset shapes
"""

SUBCOMMANDS = {  # name -> (one-line help, description)
    "zeroshot": (
        "zero-shot classification: class names x prompt templates -> text classifier",
        "Zero-shot classification on the test split: every class name is put into every template, the "
        "unit text embeddings are averaged per class and renormalised, and each image goes to the most "
        "similar class. Reports top-1, top-5 (with >= 5 classes) and mean per-class recall.",
    ),
    "probe": (
        "linear probe: logistic regression on frozen image features",
        "Linear probe: multinomial L2 logistic regression (sklearn's C parameterisation, full-batch "
        "L-BFGS) on frozen image embeddings of the train split. C is swept over a log-spaced grid on a "
        "stratified validation part of train, refitted on all of train, and scored on the test split.",
    ),
    "retrieval": (
        "image<->text retrieval recall@1/5/10",
        "Image->text and text->image retrieval on the test split's image-caption pairs: recall@1/5/10, "
        "where a query is a hit when any matching caption (or its image) is among the top k.",
    ),
    "robustness": (
        "zero-shot vs linear probe under distribution shift",
        "Robustness: zero-shot and linear-probe top-1 on the clean test split and on shifted test sets "
        "with the same classes (default for shapes: every shapes-shift), and the drop for each. The "
        "probe is trained on clean train features only.",
    ),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    runners = {"zeroshot": run_zeroshot, "probe": run_probe, "retrieval": run_retrieval, "robustness": run_robustness}
    for name, (help_line, description) in SUBCOMMANDS.items():
        parser = subparsers.add_parser(
            name,
            help=help_line,
            description=description,
            epilog=EPILOG.format(datasets=DATASET_HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_common_arguments(parser, dataset_required=name != "robustness")
        if name in ("zeroshot", "robustness"):
            parser.add_argument(
                "--templates",
                default="simple",
                metavar="SET",
                help=f"prompt templates: {' | '.join(builtin_template_names())} | dataset (the dataset's own "
                "set when one ships, e.g. shapes, else simple) | FILE with one template containing {} per line "
                "(default simple: 'a photo of a {}.')",
            )
        if name in ("probe", "robustness"):
            add_probe_arguments(parser)
        if name == "robustness":
            parser.add_argument(
                "--shift",
                action="append",
                metavar="DATASET",
                help="a shifted test set with the same classes (repeatable); default for shapes: all shapes-shift:*",
            )
        parser.set_defaults(func=runners[name], out_kind="file")  # --out is one JSON file


def add_common_arguments(parser: argparse.ArgumentParser, dataset_required: bool) -> None:
    parser.add_argument("--model", required=True, metavar="SPEC", help=MODEL_HELP)
    parser.add_argument("--arch", metavar="ARCH", help="open_clip architecture of a bare checkpoint file (e.g. ViT-B-32)")
    parser.add_argument(
        "--dataset",
        required=dataset_required,
        default=None if dataset_required else "shapes",
        metavar="DATASET",
        help=f"what to evaluate on: {DATASET_HELP}" + ("" if dataset_required else " (default shapes)"),
    )
    parser.add_argument("--n", type=int, metavar="N", help="test images, a seeded subset (default: shapes 520, others all)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed for data subsets and splits (default 0)")
    parser.add_argument("--batch-size", type=int, default=64, metavar="B", help="images per forward pass (default 64)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda when available)")
    parser.add_argument("--out", metavar="OUT.json", help="write the results as JSON here")
    parser.add_argument("--cache", metavar="DIR", help="feature cache folder (default: <VLBRIDGE_CACHE>/features)")


def add_probe_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ProbeConfig()
    parser.add_argument("--n-train", type=int, metavar="N", help="train images, a seeded subset (default: shapes 2080, others all)")
    parser.add_argument("--c-min", type=float, default=defaults.c_min, help=f"smallest C swept (default {defaults.c_min:g})")
    parser.add_argument("--c-max", type=float, default=defaults.c_max, help=f"largest C swept (default {defaults.c_max:g})")
    parser.add_argument("--c-steps", type=int, default=defaults.c_steps, help=f"log-spaced C values of the coarse sweep (default {defaults.c_steps})")
    parser.add_argument(
        "--refine-per-decade",
        type=int,
        default=defaults.refine_per_decade,
        help=f"then binary-search C around the best down to this many steps per decade, 0 = none (default {defaults.refine_per_decade}, CLIP's)",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=defaults.val_fraction,
        help=f"share of each class's train images used to choose C (default {defaults.val_fraction})",
    )
    parser.add_argument("--max-iter", type=int, default=defaults.max_iter, help=f"L-BFGS iterations per fit (default {defaults.max_iter})")
    parser.add_argument("--standardize", action="store_true", help="z-score features before the fit (default: raw)")


def run_zeroshot(args: argparse.Namespace) -> int:
    from vlbridge.evaluation.features_io import labelled_features
    from vlbridge.evaluation.templates import templates_for
    from vlbridge.evaluation.zero_shot import build_classifier, zero_shot_scores

    bundle, encoder, store = load_clip_features(args)
    templates = templates_for(args.templates, args.dataset)[1]
    test = load_split(args, "test", args.n)
    features = labelled_features(store, encoder, test, args.batch_size, normalize=True)
    classifier = build_classifier(bundle, test.classnames, templates)  # (C, E)
    metrics = zero_shot_scores(features.features, classifier, features.labels)
    result = describe(args, bundle, test, templates=args.templates, n_templates=len(templates), metrics=metrics)
    title = f"zero-shot: {bundle.name} on {args.dataset} ({metrics['n']} images, {len(test.classnames)} classes)"
    finish(args, result, title, metric_rows(metrics))
    return 0


def run_probe(args: argparse.Namespace) -> int:
    from vlbridge.evaluation.features_io import labelled_features
    from vlbridge.evaluation.linear_probe import linear_probe

    bundle, encoder, store = load_clip_features(args)
    train = load_split(args, "train", args.n_train)
    test = load_split(args, "test", args.n)
    train_f = labelled_features(store, encoder, train, args.batch_size, normalize=True)
    test_f = labelled_features(store, encoder, test, args.batch_size, normalize=True)
    config = probe_config(args)
    metrics = linear_probe(train_f.features, train_f.labels, test_f.features, test_f.labels, len(test.classnames), config)
    n_train = len(train_f.labels)
    result = describe(args, bundle, test, n_train=n_train, probe_config=vars(config), metrics=metrics)
    title = f"linear probe: {bundle.name} on {args.dataset} ({n_train} train / {metrics['n']} test images)"
    rows = metric_rows({key: value for key, value in metrics.items() if key != "sweep"})
    finish(args, result, title, rows)
    return 0


def run_retrieval(args: argparse.Namespace) -> int:
    import torch.nn.functional as F

    from vlbridge.data import datasets
    from vlbridge.evaluation.features_io import captioned, image_features
    from vlbridge.evaluation.retrieval import retrieval_scores

    bundle, encoder, store = load_clip_features(args)
    data = captioned(datasets.load_dataset(args.dataset, "image_text", split="test", n=args.n, seed=args.seed))
    images_f, kept = image_features(store, encoder, data, args.batch_size)
    texts, owners = [], []
    for position, record_index in enumerate(kept):
        texts.extend(data.records[record_index].captions)
        owners.extend([position] * len(data.records[record_index].captions))
    text_features = bundle.embed_texts(texts)  # (T, E)
    metrics = retrieval_scores(F.normalize(images_f.float(), dim=-1), text_features, owners)
    result = {"command": "retrieval", "model": bundle.name, "dataset": args.dataset, "split": "test"}
    result.update(seed=args.seed, metrics=metrics)
    title = f"retrieval: {bundle.name} on {args.dataset} ({metrics['n_images']} images, {metrics['n_texts']} captions)"
    finish(args, result, title, metric_rows(metrics))
    return 0


def run_robustness(args: argparse.Namespace) -> int:
    from vlbridge.evaluation.features_io import labelled_features
    from vlbridge.evaluation.robustness import evaluate_robustness
    from vlbridge.evaluation.templates import templates_for
    from vlbridge.evaluation.zero_shot import build_classifier

    shift_specs = args.shift or default_shifts(args.dataset)
    bundle, encoder, store = load_clip_features(args)
    templates = templates_for(args.templates, args.dataset)[1]
    train = load_split(args, "train", args.n_train)
    clean = load_split(args, "test", args.n)
    shifted = {spec: load_split(args, "test", args.n, spec) for spec in shift_specs}
    for spec, data in shifted.items():
        if data.classnames != clean.classnames:
            differing = sorted(set(data.classnames) ^ set(clean.classnames))[:3] or "the same names in another order"
            raise UserError(
                f"shifted set {spec!r} must have the classes of {args.dataset!r} in the same order "
                f"({len(clean.classnames)} classes), got {len(data.classnames)}; differing: {differing}"
            )
    features = {name: labelled_features(store, encoder, data, args.batch_size, normalize=True)
                for name, data in [("train", train), ("clean", clean)]}
    shifted_features = {spec: labelled_features(store, encoder, data, args.batch_size, normalize=True)
                        for spec, data in shifted.items()}
    classifier = build_classifier(bundle, clean.classnames, templates)  # (C, E)
    report = evaluate_robustness(
        features["train"], features["clean"], shifted_features, len(clean.classnames), classifier, probe_config(args)
    )
    result = describe(args, bundle, clean, templates=args.templates, shifts=shift_specs, metrics=report)
    title = f"robustness: {bundle.name}, trained/clean {args.dataset}, probe C={report['probe_C']:g}"
    finish(args, result, title, robustness_rows(report))
    return 0


def load_split(args: argparse.Namespace, split: str, n: int | None, spec: str | None = None) -> datasets.Dataset:
    """The labelled `split` of --dataset (or of `spec`), n images (a seeded subset) when n is given."""
    from vlbridge.data import datasets

    return datasets.load_dataset(spec or args.dataset, "classification", split=split, n=n, seed=args.seed)


def default_shifts(dataset: str) -> list[str]:
    """Every shapes-world shift of an unshifted shapes spec; other datasets need --shift."""
    from vlbridge.data.specs import parse_spec

    parsed = parse_spec(dataset)
    if parsed.scheme != "shapes" or "shift" in parsed.options:
        raise UserError(f"robustness on {dataset!r} needs at least one --shift DATASET with the same classes")
    from vlbridge.data.shapes import SHIFTS

    return [parsed.with_options(shift=name).text() for name in SHIFTS]


def load_clip_features(args: argparse.Namespace):
    """(ClipBundle of --model/--arch on --device, its image encoder, the --cache FeatureStore).

    --out and --cache are checked for writing first: one line instead of a traceback after the work.

    load_clip is imported only now. The encoder is the CLIP's pooled image embedding
    (`ClipImageEncoder`, what `clip:PATH` builds), unnormalised; the commands normalise it.
    """
    from vlbridge.data.features import default_feature_root
    from vlbridge.evaluation.features_io import eval_store
    from vlbridge.io import check_writable_dir, check_writable_file
    from vlbridge.models.clip_loading import load_clip
    from vlbridge.models.encoders_clip import ClipImageEncoder
    from vlbridge.runtime import resolve_device

    if args.out:  # every output place is checked before the model loads and features are computed
        check_writable_file(args.out, "--out")
    cache = check_writable_dir(Path(args.cache) if args.cache else default_feature_root(), "--cache")
    bundle = load_clip(args.model, device=resolve_device(args.device), arch=args.arch)
    encoder = ClipImageEncoder(bundle).to(bundle.device)
    return bundle, encoder, eval_store(cache, args.batch_size)


def probe_config(args: argparse.Namespace) -> ProbeConfig:
    from vlbridge.runtime import resolve_device

    return ProbeConfig(
        c_min=args.c_min,
        c_max=args.c_max,
        c_steps=args.c_steps,
        refine_per_decade=args.refine_per_decade,
        val_fraction=args.val_fraction,
        standardize=args.standardize,
        max_iter=args.max_iter,
        seed=args.seed,
        device=str(resolve_device(args.device)),
    )


def describe(args: argparse.Namespace, bundle, data: datasets.Dataset, **fields) -> dict:
    """The JSON result: what was evaluated, how, and the metrics."""
    head = {"command": args.subcommand, "model": bundle.name, "dataset": args.dataset, "split": data.split}
    head.update(seed=args.seed, classes=data.classnames)
    return {**head, **fields}


def metric_rows(metrics: dict) -> list[tuple[str, str]]:
    """(name, value) rows; accuracies shown as percentages."""
    rows = []
    for key, value in metrics.items():
        if isinstance(value, float) and key != "C":
            rows.append((key, f"{100 * value:.2f}%"))
        else:
            rows.append((key, f"{value:g}" if isinstance(value, float) else str(value)))
    return rows


def robustness_rows(report: dict) -> list[tuple[str, str]]:
    """One row per test set: each head's top-1 and its drop from clean, in accuracy points."""
    heads = [key[: -len("_top1")] for key in report["clean"]]
    rows = [("test set", "".join(f"{head + ' top1':>16}{'drop':>9}" for head in heads))]
    rows.append(("clean", "".join(f"{100 * report['clean'][f'{h}_top1']:>15.2f}%{'':>9}" for h in heads)))
    for name, row in report["shifts"].items():
        cells = [f"{100 * row[f'{h}_top1']:>15.2f}%{100 * row[f'{h}_drop']:>+9.2f}" for h in heads]
        rows.append((name, "".join(cells)))
    mean_drop = "".join(f"{'':>16}{100 * report['mean_drop'][h]:>+9.2f}" for h in heads)
    rows.append(("mean drop", mean_drop))
    return rows


def finish(args: argparse.Namespace, result: dict, title: str, rows: list[tuple[str, str]]) -> None:
    """Print the table and, with --out, write `result` as JSON."""
    width = max(len(name) for name, _ in rows)
    print(title)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    if args.out:
        out = Path(args.out)
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
