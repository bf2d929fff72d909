"""`--preset paper`: the LiMBeR paper's recipe at real scale, its path check, and its dry run.

The paper preset reproduces the LiMBeR table (Merullo et al., ICLR 2023, "Linearly Mapping
from Image to Text Space"): no encoder is trained and no CLIP table is made (`train_encoders`
off, `clip_table.datasets` empty); one linear projector per image encoder into a
frozen GPT-J 6B, trained on CC3M, then COCO (Karpathy test) and NoCaps (in / near / out)
captioning and VQAv2 few-shot VQA with a blind baseline. Every file comes from the local paths
of `config.paper` (`PaperPaths`), named in specs as `{paper.FIELD}`; nothing is downloaded.

    vlbridge study --preset paper --config paths.yaml      # paths.yaml: paper: {lm: ..., ...}
    vlbridge study --preset paper --dry-run --out runs/dry  # the same recipe on tiny stand-ins

The preset tree itself, and where each of its numbers comes from, is `PAPER_PRESET` in
`vlbridge.study.presets`.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from vlbridge.config import merge, parse_overrides, read_mapping, to_dict
from vlbridge.errors import BadInputError, UserError
from vlbridge.study.config import PaperPaths, StudyConfig, load_study_config
from vlbridge.study.presets import DRY_RUN_NFRN50_PX, DRY_RUN_SIZES, NFRN50_PX
from vlbridge.runtime import DistEnv, barrier, resolve_device

log = logging.getLogger(__name__)

PATH_KINDS = {  # PaperPaths field -> (what must be there, what it is)
    "cc3m_shards": ("shards", "CC3M webdataset shards"),
    "coco_annotations": ("file", "COCO captions_val2014.json"),
    "coco_karpathy": ("file", "Karpathy's dataset_coco.json"),
    "coco_images": ("dir", "COCO val2014 image folder"),
    "nocaps_json": ("file", "nocaps_val_4500_captions.json"),
    "nocaps_images": ("dir", "NoCaps validation image folder"),
    "vqav2_questions": ("file", "v2_OpenEnded_mscoco_val2014_questions.json"),
    "vqav2_annotations": ("file", "v2_mscoco_val2014_annotations.json"),
    "vqav2_images": ("dir", "COCO val2014 image folder"),
    "lm": ("dir", "GPT-J 6B HF directory"),
    "clip_rn50x16": ("file", "OpenAI RN50x16.pt"),
    "clip_scorer": ("file", "OpenAI ViT-B-32.pt"),
    "beit_large": ("dir", "HF BEiT-large directory"),
    "beit_large_ft22k": ("dir", "HF BEiT-large pt22k-ft22k directory"),
    "nf_resnet50": ("file", "timm nf_resnet50 weights"),
}
_PLACEHOLDER = re.compile(r"\{paper\.([^{}]*)\}")


# ------------------------------------------------------------------------------------ check_paths
def referenced_paths(config: StudyConfig) -> dict[str, list[str]]:
    """{PaperPaths field: config keys whose spec names {paper.FIELD}} over the sections the run reads."""
    sections = {"limber": to_dict(config.limber)}
    if config.clip_table.datasets:
        sections["clip_table"] = to_dict(config.clip_table)
    found: dict[str, list[str]] = {}

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict):
            for name, child in node.items():
                walk(child, f"{key}.{name}")
        elif isinstance(node, list):
            for index, child in enumerate(node):
                walk(child, f"{key}[{index}]")
        elif isinstance(node, str):
            for field_name in _PLACEHOLDER.findall(node):
                found.setdefault(field_name, []).append(key)

    for name, section in sections.items():
        walk(section, name)
    return found


def path_problem(kind: str, value: str) -> str | None:
    """Why `value` cannot be a `kind` ("file" | "dir" | "shards") path, or None when it can."""
    from vlbridge.data.formats_wds import REMOTE_PREFIXES, shard_urls

    if not value.strip():
        return "is empty"
    if kind == "shards":
        if value.startswith(REMOTE_PREFIXES):
            return None
        try:
            shard_urls(value)
        except BadInputError as err:
            return f"= {value!r}: {str(err).split(': ', 1)[-1]}"
        return None
    path = Path(value).expanduser()
    if not path.exists():
        return f"= {value!r} does not exist"
    if kind == "dir" and not path.is_dir():
        return f"= {value!r} is not a directory"
    if kind == "file" and not path.is_file():
        return f"= {value!r} is not a file"
    return None


def check_paths(config: StudyConfig) -> None:
    """One UserError listing every paper path the recipe reads that is empty or missing."""
    problems = []
    for field_name, keys in referenced_paths(config).items():
        where = keys[0] + (f" and {len(keys) - 1} more" if len(keys) > 1 else "")
        if field_name not in PATH_KINDS:
            problems.append(f"{where} names {{paper.{field_name}}}, which is not a paper path "
                            f"(known: {', '.join(PATH_KINDS)})")
            continue
        kind, what = PATH_KINDS[field_name]
        problem = path_problem(kind, getattr(config.paper, field_name))
        if problem:
            problems.append(f"paper.{field_name} ({what}, read by {where}) {problem}")
    if problems:
        raise UserError(
            f"the paper preset cannot find {len(problems)} of its local files: " + "; ".join(problems)
            + ". Give them in --config FILE (YAML: `paper: {lm: /models/gpt-j-6b, cc3m_shards: "
            "'/data/cc3m/{00000..00331}.tar', ...}`) or as overrides paper.FIELD=PATH"
        )


# ------------------------------------------------------------------------------------ dry run
def write_paths_config(paths: PaperPaths, path: Path) -> Path:
    """The `paper:` section a real run's --config file holds, here pointing at the stand-ins."""
    path.write_text(yaml.safe_dump({"paper": to_dict(paths)}, sort_keys=False), encoding="utf-8")
    return path


def _standins_on_main(out_dir: Path, env: DistEnv) -> Path:
    """Rank 0 writes the stand-ins and their paths config; every rank gets the config's path after it."""
    from vlbridge.study.standins import build_standins

    paths_file = out_dir / "standins" / "paper-paths.yaml"
    if env.is_main:
        print(f"[dry-run] writing tiny stand-ins of the paper's data and models to {out_dir / 'standins'} ...")
        write_paths_config(build_standins(out_dir / "standins"), paths_file)
    barrier(env)
    return paths_file


def dry_run_config(paths_file: Path, out_dir: Path, config_path: str | None, overrides: list[str]) -> StudyConfig:
    """Preset, the user's file, the stand-in paths, tiny sizes, then the user's key=value overrides."""
    config = load_study_config("paper", config_path, [])
    config = merge(config, read_mapping(paths_file))
    small_inputs = {key: spec.replace(f":{NFRN50_PX}px", f":{DRY_RUN_NFRN50_PX}px")
                    for key, spec in config.limber.encoders.items()}
    config = merge(config, {**DRY_RUN_SIZES, "cache_dir": str(out_dir / "cache")})
    config = merge(config, {"limber": {"encoders": small_inputs}})
    if resolve_device(config.device).type == "cpu":
        config = merge(config, {"limber": {"train": {"lm_dtype": "float32"}}})  # fp32 on CPU
    return merge(config, parse_overrides(overrides))


def missing_results(results: dict, config: StudyConfig, out_dir: Path) -> list[str]:
    """What a complete paper run must have produced but this one did not (empty list: all there)."""
    missing = [name for name in ("results.json", "report.md", "report.html") if not (out_dir / name).is_file()]
    shots = [str(n) for n in config.limber.shots]
    for encoder in config.limber.encoders:
        entry = results.get("captioning", {}).get(encoder, {})
        missing += [f"captioning[{encoder}].{name}" for name in config.limber.caption_sets if name not in entry]
        for name, spec in config.limber.caption_sets.items():
            if spec.startswith("nocaps:") and not {"in", "near", "out", "entire"} <= set(entry.get(name, {}).get("by_domain", {})):
                missing.append(f"captioning[{encoder}].{name}.by_domain in/near/out/entire")
    missing += [f"likelihood[{encoder}]" for encoder in config.limber.encoders if encoder not in results.get("likelihood", {})]
    missing += [f"findings {claim}" for claim in ("C3", "C4", "C5")
                if claim not in {f["id"] for f in results.get("findings", []) if f.get("effect") is not None}]
    for encoder in [*config.limber.encoders, "blind"]:
        missing += [f"vqa[{encoder}][{n}]" for n in shots if n not in results.get("vqa", {}).get(encoder, {})]
    return missing


def dry_run(out_dir: str | Path, config_path: str | None, overrides: list[str] | None, force: bool = False,
            env: DistEnv | None = None) -> int:
    """Run the paper recipe end to end on tiny stand-ins in out_dir; print a one-line verdict; 0 if it passed.

    `env`: under torchrun every rank calls this; rank 0 writes the stand-ins and prints.
    """
    from vlbridge.study.runner import run_study

    out_dir = Path(out_dir)
    env = env or DistEnv()
    started = time.perf_counter()
    paths_file = _standins_on_main(out_dir, env)
    config = dry_run_config(paths_file, out_dir, config_path, list(overrides or []))
    check_paths(config)
    threads = torch.get_num_threads()
    if resolve_device(config.device).type == "cpu":
        torch.set_num_threads(1)  # tiny models: one thread beats two that spin-wait on a shared 2-core machine
    try:
        results = run_study(config, out_dir, force=force, env=env if env.distributed else None)
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - started
    missing = missing_results(results, config, out_dir)
    if not env.is_main:
        return 1 if missing else 0
    if missing:
        print(f"paper dry run FAILED after {seconds:.0f}s: no {', '.join(missing)} in {out_dir}")
        return 1
    print(f"paper dry run passed in {seconds:.0f}s: {len(config.limber.encoders)} encoders "
          f"({', '.join(config.limber.encoders)}) trained {config.limber.train.steps} steps each into GPT-J, "
          f"captioned {' + '.join(config.limber.caption_sets)}, VQA at {'/'.join(map(str, config.limber.shots))} "
          f"shots + blind; paths config {paths_file}; report {out_dir / 'report.html'}")
    return 0
