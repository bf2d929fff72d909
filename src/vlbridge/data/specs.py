"""Dataset spec strings: the one grammar that names data everywhere (CLI, configs, the study).

    scheme:TARGET[?key=value&...]   data on disk; TARGET is a path, file or shard pattern
    name[?key=value&...]            a named dataset: the shapes world or an embedded set

Schemes and names, with the options only they take:

    folder:DIR                      image + same-stem .txt (one caption a line)
    csv:FILE[?image=col&caption=col&sep=\\t]   one (image path, caption) per row; .tsv means tabs
    jsonl:FILE                      {"id", "image", "captions" | "caption", label?, split?, domain?}
                                    (or VQA lines: question_id, image_id, image, question, answers)
    wds:PATTERN[?by_rank=1]         webdataset shards, e.g. wds:shards/{000000..000009}.tar (streamed)
    coco:JSON[?images=DIR&karpathy=FILE]      COCO captions / Karpathy's dataset_coco.json
    nocaps:JSON?images=DIR          NoCaps val (domains in / near / out)
    vqav2:QUESTIONS?annotations=A&images=DIR[&subtype=S]   VQAv2 (VQA only)
    imagefolder:DIR                 DIR/<class>/<image> or DIR/<split>/<class>/<image>
    shapes[?shift=..&domain=..&image_size=..&max_objects=..]   the procedural shapes world
    objects[?shift=..&image_size=..&max_objects=..&things=..&classes=..]   shapes and named
                                    Twemoji things (things= share of objects that are things,
                                    0..1; classes= label set of the classification view:
                                    things | shapes | all)
    twemoji | openclipart | animal-silhouettes | fashion-mnist  the embedded data sets

Options every spec takes, with one meaning everywhere (`vlbridge.data.datasets` applies them):

    split=S    records of split S (shapes: train / val / test; embedded: train / test)
    n=N        a seeded subset of N records, kept in stored order (shapes: N images generated)
    first=N    the first N records as stored (a stream stays a stream); not with n=, not for shapes
    seed=S     seeds n= (and the shapes world's scenes and the embedded sets' hash split); default 0

N is a whole number >= 1. Values are %-decoded ('+' stays '+'). The old spellings still read:
`shapes-shift:<shift>[?...]` is `shapes?shift=<shift>`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from urllib.parse import quote, unquote

from vlbridge.data.subsets import check_count
from vlbridge.errors import UserError

__all__ = ["NAMED", "SCHEMES", "SELECTION_OPTIONS", "DataSpec", "known_specs", "parse_spec", "with_request"]

SELECTION_OPTIONS = ("split", "n", "first", "seed")  # options every spec takes
SCHEMES = {  # scheme -> the options it takes besides SELECTION_OPTIONS
    "folder": (), "csv": ("image", "caption", "sep"), "jsonl": (), "wds": ("by_rank",),
    "coco": ("images", "karpathy"), "nocaps": ("images",), "vqav2": ("annotations", "images", "subtype"),
    "imagefolder": (),
}
NAMED = {  # dataset names without a path -> the options they take besides SELECTION_OPTIONS
    "shapes": ("shift", "domain", "image_size", "max_objects"),
    "objects": ("shift", "image_size", "max_objects", "things", "classes"),
    "twemoji": (), "openclipart": (), "animal-silhouettes": (), "fashion-mnist": (),
}
NOT_FOR = {"shapes": ("first",), "objects": ("first",)}  # selection options a dataset refuses (shapes: n= already is "the first n")
LEGACY_SHIFT = "shapes-shift:"  # old spelling of shapes?shift=
_SAFE = "/:@{}.,+-_~*"  # characters left unquoted when a spec is written back


@dataclass(frozen=True)
class DataSpec:
    """A parsed spec string: scheme (or dataset name), path / pattern, ?options."""

    scheme: str  # "csv", "wds", ... or a NAMED dataset
    target: str  # the path, file or shard pattern ("" for named datasets)
    options: dict[str, str] = field(default_factory=dict)  # the ?key=value pairs

    def text(self) -> str:
        """The spec written back, options sorted: equal specs give equal strings (cache keys)."""
        body = self.scheme if self.scheme in NAMED else f"{self.scheme}:{self.target}"
        query = "&".join(f"{key}={quote(value, safe=_SAFE)}" for key, value in sorted(self.options.items()))
        return f"{body}?{query}" if query else body

    def with_options(self, **values: object) -> "DataSpec":
        """A copy with these options set (None values are left out)."""
        return replace(self, options={**self.options, **{k: str(v) for k, v in values.items() if v is not None}})

    def count(self, name: str) -> int | None:
        """Option `name` (n, first) as a record count >= 1, or None when absent."""
        value = self.options.get(name)
        return None if value is None else check_count(f"{name}=", self.integer(name))

    def integer(self, name: str, default: int | None = None) -> int | None:
        """Option `name` as a whole number (`default` when absent)."""
        value = self.options.get(name)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError as err:
            raise UserError(f"dataset option {name}= expects a whole number, got {value!r} in {self.text()!r}") from err


def known_specs() -> str:
    return ", ".join([f"{scheme}:..." for scheme in SCHEMES] + list(NAMED))


def parse_spec(spec: str) -> DataSpec:
    """Split "scheme:target?k=v&..." (or "name?k=v") and check the scheme and option names."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"expected a dataset spec like jsonl:FILE or shapes, got {spec!r}; known: {known_specs()}")
    body, _, query = spec.strip().partition("?")
    pairs = [part.partition("=") for part in query.split("&") if part]
    options = {unquote(key): unquote(value) for key, _, value in pairs}  # '+' stays '+' (paths may hold it)
    if body.startswith(LEGACY_SHIFT):
        body, options = "shapes", _legacy_shift(spec, body[len(LEGACY_SHIFT):], options)
    if body in NAMED:
        scheme, target = body, ""
    else:
        scheme, colon, target = body.partition(":")
        if scheme in NAMED:
            hint = f" (did you mean shapes?shift={target})" if scheme == "shapes" else ""
            raise UserError(f"dataset {scheme!r} takes no path, got {spec!r}{hint}; options go after '?'")
        if not colon or scheme not in SCHEMES:
            raise UserError(f"unknown dataset spec {spec!r}: expected one of {known_specs()}")
        if not target:
            raise UserError(f"dataset spec {spec!r}: expected a path after '{scheme}:'")
    parsed = DataSpec(scheme, target, options)
    _check_option_names(parsed, spec)
    return parsed


def _legacy_shift(spec: str, shift: str, options: dict[str, str]) -> dict[str, str]:
    if not shift:
        raise UserError(f"dataset spec {spec!r}: expected a shift after 'shapes-shift:' (sketch, noisy, blur, invert)")
    if options.get("shift", shift) != shift:
        raise UserError(f"dataset spec {spec!r} names two shifts, {shift!r} and {options['shift']!r}")
    return {**options, "shift": shift}


def _check_option_names(parsed: DataSpec, spec: str) -> None:
    own = NAMED[parsed.scheme] if parsed.scheme in NAMED else SCHEMES[parsed.scheme]
    refused = NOT_FOR.get(parsed.scheme, ())
    allowed = [name for name in SELECTION_OPTIONS if name not in refused] + list(own)
    unknown = sorted(set(parsed.options) - set(allowed))
    if unknown:
        raise UserError(f"dataset spec {spec!r}: unknown option {unknown[0]!r}; {parsed.scheme} takes {allowed}")
    if "n" in parsed.options and "first" in parsed.options:
        raise UserError(f"dataset spec {spec!r}: give n= (a seeded subset) or first= (the first records), not both")
    for name in ("n", "first"):
        parsed.count(name)


def with_request(parsed: DataSpec, split: str | None = None, n: int | None = None, seed: int | None = None,
                 image_size: int | None = None) -> DataSpec:
    """`parsed` with what a caller (a command, a config) asks for filled in where the spec is silent.

    The spec's own n= / first= / seed= / image_size= win over the caller's; a split= in the spec
    that differs from the caller's split is an error (a command that reads train and test picks
    the split itself). `image_size` only applies to generated data (the shapes world).
    """
    if n is not None:
        check_count("n", n)
    spec_split = parsed.options.get("split")
    if split is not None and spec_split is not None and spec_split != split:
        raise UserError(
            f"dataset spec {parsed.text()!r} fixes split={spec_split}, but split {split!r} is read here; "
            "drop split= from the spec"
        )
    values: dict[str, object] = {"split": split}
    if "first" not in parsed.options and "n" not in parsed.options:
        values["n"] = n
    if "seed" not in parsed.options:
        values["seed"] = seed
    if parsed.scheme in ("shapes", "objects") and "image_size" not in parsed.options:
        values["image_size"] = image_size
    return parsed.with_options(**values)
