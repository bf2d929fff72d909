"""Prompt templates for zero-shot classification: named sets and user template files.

A template is a string with one or more `{}` that the class name replaces
("a photo of a {}." -> "a photo of a red circle."). `load_templates(spec)` resolves what
the CLI's `--templates` names:

  - "openai":  OpenAI's 80 ImageNet templates, taken from the open_clip package
               (`open_clip.zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES`);
  - any file shipped as `vlbridge/evaluation/templates/<name>.txt` ("simple" is
    "a photo of a {}.");
  - a path to a user file: UTF-8 text, one template per line; blank lines and lines
    starting with "#" are ignored; every other line must contain `{}`;
  - "dataset" (with `templates_for`): each dataset's own shipped set when there is one
    (`shapes.txt` for the shapes world), else "simple" -- per-dataset prompts, as CLIP used.

`fill_template(template, classname)` does the substitution (plain replacement, so other
braces in a template are left alone).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from vlbridge.errors import BadInputError, UserError

PLACEHOLDER = "{}"  # what a class name replaces in a template
OPENAI = "openai"  # name of the template set taken from open_clip
PER_DATASET = "dataset"  # templates_for: the dataset's own shipped set, else FALLBACK
FALLBACK = "simple"  # the set used for datasets without their own


def fill_template(template: str, classname: str) -> str:
    """`template` with every `{}` replaced by `classname`."""
    return template.replace(PLACEHOLDER, classname)


def builtin_template_names() -> list[str]:
    """Names accepted by `load_templates` besides file paths: "openai" and the shipped .txt sets."""
    shipped = resources.files("vlbridge.evaluation").joinpath("templates")
    names = [entry.name[: -len(".txt")] for entry in shipped.iterdir() if entry.name.endswith(".txt")]
    return sorted(set(names) | {OPENAI})


def openai_templates() -> list[str]:
    """OpenAI's 80 ImageNet templates as open_clip ships them, rendered to `{}` strings."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    # open_clip stores them as lambdas `lambda c: f"...{c}..."`; calling with "{}" gives the string.
    return [make(PLACEHOLDER) for make in OPENAI_IMAGENET_TEMPLATES]


def templates_for(spec: str, dataset: str) -> tuple[str, list[str]]:
    """(set name, templates) for `dataset` ("shapes", "shapes-shift:blur", "fashion-mnist", ...)."""
    from vlbridge.data.specs import parse_spec  # imported here: specs pulls torch, and `vlbridge eval --help` must not

    if spec != PER_DATASET:
        return spec, load_templates(spec)
    family = parse_spec(dataset).scheme  # "shapes?shift=blur", "shapes-shift:blur" -> "shapes"
    name = family if family in builtin_template_names() and family != OPENAI else FALLBACK
    return name, load_templates(name)


def load_templates(spec: str) -> list[str]:
    """The templates named by `spec`: "openai", a shipped set name, or a template file path."""
    if spec == OPENAI:
        return openai_templates()
    shipped = resources.files("vlbridge.evaluation").joinpath("templates", f"{spec}.txt")
    if "/" not in spec and "\\" not in spec and shipped.is_file():
        return parse_template_text(shipped.read_text(encoding="utf-8"), where=f"built-in set {spec!r}")
    path = Path(spec)
    if not path.is_file():
        raise UserError(
            f"--templates expects one of {', '.join(builtin_template_names())} or a template file; "
            f"got {spec!r}, which is neither"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise BadInputError(f"template file {path} is not readable UTF-8 text: {err}") from err
    return parse_template_text(text, where=str(path))


def parse_template_text(text: str, where: str = "<text>") -> list[str]:
    """Templates from file text: one per line, blank and '#' lines skipped, each must hold `{}`."""
    templates = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        template = line.strip()
        if not template or template.startswith("#"):
            continue
        if PLACEHOLDER not in template:
            raise BadInputError(
                f"{where} line {line_number}: a template must contain {{}} where the class name goes; "
                f"got {template!r}"
            )
        templates.append(template)
    if not templates:
        raise BadInputError(f"{where} holds no templates (expected one template with {{}} per line)")
    return templates
