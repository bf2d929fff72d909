"""`vlbridge serve --demo`: the models of the newest finished study run and an index over the embedded data.

The study leaves `latest-<preset>.json` in its cache (`vlbridge.study.runner.read_manifest`):
the trained CLIP's folder and one LiMBeR projector folder per encoder key. The demo serves the
projector of key "clip" (the trained CLIP's image tower into SmolLM2) and that CLIP, and
searches an index over the embedded data sets (Twemoji, the openclipart test split and shapes-world
test images) kept in the study cache under serve-index/<CLIP folder name>; it is built on the
first start (a minute or two on 2 CPU cores) and reused afterwards. Embedded sets that are not
installed are left out with a warning. Questions may use DEMO_SHOTS solved shapes-world training
questions as few-shot examples (`"shots": N` in /v1/vqa; the page's "examples" choice).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from vlbridge.errors import AssetMissingError, UserError

log = logging.getLogger(__name__)

DEMO_SOURCES = ("twemoji", "openclipart?split=test", "shapes?split=test&n=500")  # what the demo index holds
DEMO_ENCODER_KEY = "clip"  # the study's encoder key whose projector the demo serves
DEMO_NAME = "demo"  # model ids of the demo: limber:demo and clip:demo
DEMO_SHOTS = 4  # solved shapes-world questions the demo offers as few-shot examples (VQA "shots": N)
DEMO_SHOTS_SEED = 7  # which training questions they are
NO_STUDY = ("no finished `{preset}` study run in {cache}: run `make demo` (or `vlbridge study`) first, "
            "then `vlbridge serve --demo`")


@dataclass
class DemoPaths:
    """Where the demo's models and index are."""

    limber: Path  # the "clip" projector folder of the newest study run
    clip: Path  # that run's CLIP folder
    index: Path  # the demo index (may not exist yet)
    vqa_template: str  # the study preset's question wording


def demo_paths(preset: str = "default", cache_dir: str | Path | None = None) -> DemoPaths:
    """The newest study run's models; a one-line UserError saying what to run when there is none."""
    from vlbridge.study.config import load_study_config
    from vlbridge.study.runner import default_cache_dir, read_manifest

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    manifest = read_manifest(preset, cache)
    if manifest is None:
        raise UserError(NO_STUDY.format(preset=preset, cache=cache))
    projector = manifest.get("projectors", {}).get(DEMO_ENCODER_KEY)
    if not manifest.get("clip") or not projector:
        raise UserError(f"the newest `{preset}` study run trained no CLIP or no '{DEMO_ENCODER_KEY}' projector; "
                        "run `vlbridge study` with its default encoders")
    clip = Path(manifest["clip"])
    for path in (clip, Path(projector)):
        if not path.exists():
            raise UserError(f"{path} named by the study manifest is gone; rerun `make demo` (or `vlbridge study`)")
    template = load_study_config(preset).limber.vqa_template
    return DemoPaths(Path(projector), clip, cache / "serve-index" / clip.name, template)


def ensure_demo_index(paths: DemoPaths, clip) -> Path:
    """Build the demo index over DEMO_SOURCES unless it is there already; returns its folder."""
    from vlbridge.api.index_build import add_to_index, build_index
    from vlbridge.api.search_index import read_info

    info = read_info(paths.index)
    if info is not None and len(info["parts"]) >= 1 and info.get("demo_complete"):
        return paths.index
    log.info("building the demo search index in %s (first start only)", paths.index)
    built = False
    for source in DEMO_SOURCES:
        try:
            report = add_to_index(paths.index, source, clip) if built else build_index(clip, source, paths.index)
        except AssetMissingError as err:
            log.warning("demo index: leaving out %s (%s)", source, err)
            continue
        built = True
        log.info("demo index: %d images from %s", report.added, source)
    if not built:
        raise UserError("none of the embedded data sets is installed, so the demo has nothing to search; run `make setup`")
    _mark_complete(paths.index)
    return paths.index


def _mark_complete(root: Path) -> None:
    from vlbridge.api.search_index import INFO_FILE, read_info
    from vlbridge.io import atomic_write_json

    info = read_info(root)
    info["demo_complete"] = True
    atomic_write_json(root / INFO_FILE, info)


def example_shots(count: int = DEMO_SHOTS, seed: int = DEMO_SHOTS_SEED) -> list[dict]:
    """`count` solved shapes-world training questions, each of another kind (how many / what colour / is there / where ...).

    The answer is the one most of the ten annotators gave. With no shot, SmolLM2-135M mostly ends
    its answer at once (an empty answer); with these it answers in the expected form.
    """
    from collections import Counter

    from vlbridge.data.shapes import vqa_records

    shots, kinds = [], set()
    for record in vqa_records(50, split="train", seed=seed):
        kind = " ".join(record.question.split()[:2])
        if kind in kinds:
            continue
        kinds.add(kind)
        answer = Counter(record.answers).most_common(1)[0][0]
        shots.append({"image": record.image, "question": record.question, "answer": answer})
        if len(shots) == count:
            break
    return shots


def load_demo_services(paths: DemoPaths, device: str = "cpu"):
    """Services of the demo: the LiMBeR, its CLIP, the (built if missing) index and example shots for questions."""
    from vlbridge.api import ClipModel, LimberModel, SearchIndex
    from vlbridge.serve.services import Services

    limber = LimberModel.from_pretrained(paths.limber, device=device, name=DEMO_NAME)
    clip = ClipModel.from_pretrained(paths.clip, device=device, name=DEMO_NAME)
    index = SearchIndex.open(ensure_demo_index(paths, clip))
    return Services(limber, clip, index, example_shots=example_shots()).check()
