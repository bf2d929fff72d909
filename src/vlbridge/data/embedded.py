"""Readers for the embedded data sets: Twemoji, openclipart, Fashion-MNIST, animal silhouettes.

Each reader returns `ImageTextRecord`s (see `vlbridge.data.records`) from the assets that
`make setup` installs (`vlbridge.assets`); a missing asset raises `AssetMissingError` with the
install command.

    twemoji_records(split="test")            # ~1.9k emoji, captions from their names, label = category
    openclipart_records(split="train")       # ~8k clip-art PNGs, captions cleaned from file names
    fashion_mnist_records("test", n=1000)    # official split, label = one of the 10 class names
    animal_silhouette_records(split="test")  # 10k silhouettes of 10 animals

Twemoji, openclipart and the silhouettes have no official split: `hash_split` assigns each id to
"train" or "test" from a hash of (seed, id), so the split is the same on every machine and held-out
images exist for captioning evaluation. `split=None` returns every record (each carries its split).

Images are file paths (Twemoji, openclipart: open with `open_image`, which composites RGBA onto
white) or in-memory RGB PIL images (Fashion-MNIST, silhouettes: white shapes on black, 28x28).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import pickle
import re
from pathlib import Path

import numpy as np
from PIL import Image

from vlbridge import assets
from vlbridge.data.records import ImageTextRecord, SkipCounter

log = logging.getLogger(__name__)

SPLITS = ("train", "test")  # the two splits every reader knows
TEST_FRACTION = 0.2  # share of ids that `hash_split` puts in "test"

FASHION_MNIST_CLASSES = (  # official class names, in label order, lower-cased
    "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
ANIMAL_SILHOUETTE_CLASSES = (  # animal-mnist label order (alphabetical, as its README lists them)
    "bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra",
)


# ---------------------------------------------------------------------------------------- splits
def hash_split(key: str, seed: int = 0, test_fraction: float = TEST_FRACTION) -> str:
    """Split name for `key`: "test" for about `test_fraction` of keys, else "train"; fixed by (seed, key)."""
    digest = hashlib.sha1(f"{seed}:{key}".encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    return "test" if position < test_fraction else "train"


def _check_split(split: str | None) -> None:
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")


def _keep(records: list[ImageTextRecord], split: str | None, n: int | None) -> list[ImageTextRecord]:
    chosen = [r for r in records if split is None or r.split == split]
    return chosen if n is None else chosen[:n]


# ---------------------------------------------------------------------------------------- IDX
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (MNIST format; gzipped or not) into a numpy array of its shape."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return parse_idx(raw, where=str(path))


def parse_idx(raw: bytes, where: str = "<bytes>") -> np.ndarray:
    """IDX bytes -> array. Header: two zero bytes, a type code, the number of dimensions, then
    each dimension as a big-endian uint32; the data follows, big-endian, row-major."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{where}: expected an IDX file (starts with two zero bytes), got {raw[:4]!r}")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"{where}: unknown IDX type code 0x{type_code:02x}; expected one of {sorted(_IDX_DTYPES)}")
    header_end = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header_end], dtype=">u4"))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header_end != expected:
        raise ValueError(f"{where}: IDX header says shape {shape} ({expected} data bytes), file has {len(raw) - header_end}")
    data = np.frombuffer(raw, dtype=dtype, offset=header_end).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _gray_to_rgb_images(pixels: np.ndarray) -> list[Image.Image]:
    """(N, H, W) uint8 -> N RGB PIL images (gray copied to the three channels)."""
    rgb = np.repeat(pixels[..., None], 3, axis=-1)  # (N, H, W, 3)
    return [Image.fromarray(np.ascontiguousarray(image), "RGB") for image in rgb]


# ---------------------------------------------------------------------------------------- Fashion-MNIST
def fashion_mnist_records(split: str = "test", n: int | None = None) -> list[ImageTextRecord]:
    """Fashion-MNIST's official split ("train": 60k, "test": 10k); first `n` if given.

    label and caption = the class name ("t-shirt/top", "trouser", ...); images 28x28 RGB.
    """
    _check_split(split)
    if split is None:
        raise ValueError("fashion_mnist_records needs split='train' or 'test' (it has an official split)")
    folder = assets.require("fashion-mnist")
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_idx_file(folder, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_idx_file(folder, f"{prefix}-labels-idx1-ubyte"))
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise ValueError(f"Fashion-MNIST {split}: expected (N, 28, 28) images and N labels, got {images.shape} and {labels.shape}")
    count = images.shape[0] if n is None else min(n, images.shape[0])
    pictures = _gray_to_rgb_images(images[:count])
    return [
        ImageTextRecord(
            id=f"fashion-mnist/{split}/{index:05d}",
            image=pictures[index],
            captions=[FASHION_MNIST_CLASSES[int(labels[index])]],
            label=FASHION_MNIST_CLASSES[int(labels[index])],
            split=split,
        )
        for index in range(count)
    ]


def _idx_file(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(folder / f"{stem}.gz")


# ---------------------------------------------------------------------------------------- silhouettes
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and nothing else (no arbitrary code from a data file)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are expected")
        return super().find_class(module, name)


def load_numpy_pickle(path: Path) -> np.ndarray:
    """A gzipped pickle that holds one numpy array."""
    with gzip.open(path, "rb") as handle:
        array = _NumpyOnlyUnpickler(handle).load()
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{path}: expected a pickled numpy array, got {type(array).__name__}")
    return array


def animal_silhouette_records(split: str | None = None, seed: int = 0, n: int | None = None) -> list[ImageTextRecord]:
    """The 10,000 animal-mnist silhouettes (1,000 per class), hash-split; label = animal name.

    Captions are "a silhouette of a <animal>"; images are 28x28 RGB, white animal on black.
    """
    _check_split(split)
    folder = assets.require("animal-silhouettes")
    images = load_numpy_pickle(sorted(folder.glob("animal_data_version_*.gz"))[-1])
    labels = load_numpy_pickle(sorted(folder.glob("animal_label_version_*.gz"))[-1])
    if images.ndim != 3 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"animal-mnist: expected (N, H, W) images and N labels, got {images.shape} and {labels.shape}")
    ids = [f"animal-silhouettes/{index:05d}" for index in range(images.shape[0])]
    splits = [hash_split(record_id, seed) for record_id in ids]
    wanted = [i for i, s in enumerate(splits) if split is None or s == split][: n if n is not None else None]
    pictures = _gray_to_rgb_images(images[wanted])
    records = []
    for picture, index in zip(pictures, wanted):
        name = ANIMAL_SILHOUETTE_CLASSES[int(labels[index])]
        records.append(ImageTextRecord(ids[index], picture, [f"a silhouette of a {name}"], name, splits[index]))
    return records


# ---------------------------------------------------------------------------------------- Twemoji
_NATURAL_WORDS = re.compile(r"^[a-z][a-z ]{2,}$")  # a short name worth keeping as a caption


def emoji_captions(entry: dict) -> list[str]:
    """The emoji's name lower-cased, then its short names that read as words ("running")."""
    name = (entry.get("name") or "").strip().lower()
    captions = [name] if name else []
    for short in entry.get("short_names") or []:
        phrase = short.replace("_", " ").strip().lower()
        if _NATURAL_WORDS.match(phrase) and phrase not in captions:
            captions.append(phrase)
    return captions


def twemoji_records(split: str | None = None, seed: int = 0, n: int | None = None) -> list[ImageTextRecord]:
    """One record per emoji (skin-tone variants and the "Component" category left out).

    captions = `emoji_captions` (e.g. ["grinning face", "grinning"]); label = category lower-cased
    ("smileys & emotion", "animals & nature", ...); image = the 64 px Twemoji PNG (RGBA).
    """
    _check_split(split)
    folder = assets.require("twemoji")
    entries = json.loads((folder / "emoji.json").read_text(encoding="utf-8"))
    images = folder / "img" / "twitter" / "64"
    skipped = SkipCounter("twemoji")
    records = []
    for entry in sorted(entries, key=lambda e: e.get("sort_order", 0)):
        if entry.get("category") == "Component":
            continue
        path = images / str(entry.get("image", ""))
        captions = emoji_captions(entry)
        if not entry.get("has_img_twitter", True) or not path.is_file():
            skipped.skip("no Twemoji image", entry.get("unified", "?"))
            continue
        if not captions:
            skipped.skip("no name", entry.get("unified", "?"))
            continue
        record_id = f"twemoji/{entry['unified'].lower()}"
        label = str(entry.get("category", "")).lower() or None
        records.append(ImageTextRecord(record_id, path, captions, label, hash_split(record_id, seed)))
    if skipped.total:
        log.warning(skipped.summary())
    return _keep(records, split, n)


# ---------------------------------------------------------------------------------------- openclipart
# openclipart's PNG names are "<title>_<author, cut to fit 24 characters>_<variant>", e.g.
# "armadillo_architetto_fra_01" or "mouth_-_body_part_nicu_b_06". We drop the variant marker and
# any tail that is the start of a contributor's name as the real file names spell it (longest form seen).
OPENCLIPART_AUTHORS = tuple(
    """
    architetto_francesco_rollandin rollandin_francesco benji_park nicu_buculei jon_phillips gerald_g.
    jarno_vasamaa ganson linda_kim juliane_krug enrique_meza_c dan_gerhards matthew_gates
    sergio_luiz_araujo luiz_araujo susan_park frederic_moser yves_guillou matt_todd dave_pena
    jean-victor_balin jean_victor_balin anthony_liekens mauro_olivo aj_ashton a.j._ashton yen_cheng
    nurbldoff nubldoff nurbl fudriot_omic.ch patricia_fidi roman_bertle christoph_brill nathan_eady
    guillaume_boitel costea_bogdan leif_lodahl jonathan_dietrich charles_mccolm jakob_chaosinfa
    andy_fitzsimon ruairi_hann lumen_design_studio michael_breuer dirk_struve stefan_bazelkov jonadab
    brice_boyer aubanel_monnier k_yager daniel_steele marcelo_staudt shandy_brown wolfram_esser
    andreas_nilsson cedric_bosdonnat richard_torkar tanguy_jacq arjen_meijer michael_tunnicliffe
    stuart_moore ruud_steltenpool gabrielle_nowicki alejandro_tejada petri_lumme seth_yastrov
    kilian_valkhof james_kilfige andremarcel etienne_bersac fco._andrade mike_honeychurch t._eitel
    yogesh_kanitkar olivier_boyer joeseph_teed didier_fabert marcelo_caiafa celso_junio
    alex_fernandez lauris_kaplinski hans_deragon kurt_cagle orlando_karam alex_kuehne rory_mccann
    ralf_stephan stefan_illner astrid_graeber erich_schubert james_birkett josu_alcalde
    joel_montes_de rick_beton igor_k michael_ja mike_powers daniel_mcr andrea_bianc
    martin_schmidt-li omar_abo-na santiago_diaz steffen_gluc tobias_jakobs dennis_bo anton_yu ani_ani
    nicolas_cle toh_yen_cheng snuatautisticido saurabh ingoenius mo peterm mateya mimooh zazou romus frouke
    """.split()
)
_VARIANT_TOKEN = re.compile(r"^(\d+[a-z]?|r|v|bw|bwh)$")  # "01", "01r", "r", "bw": versions, not words
_MIN_PARTIAL_AUTHOR = 3  # shortest cut-off author name we strip ("ger" of "gerald_g.")
_JUNK_WORDS = {"aiga", "gnome", "gtk", "kde", "mime", "stock"}  # collection / icon-theme prefixes
_CARD_NAME = re.compile(r"^(ornamental|white|simple|bordered)_([cdhs])_(\w+)$")  # playing-card files
_CARD_SUITS = {"c": "clubs", "d": "diamonds", "h": "hearts", "s": "spades"}
_CARD_RANKS = {"a": "ace", "k": "king", "q": "queen", "j": "jack"}
_JOKER_NAME = re.compile(r"^(ornamental|white|simple|bordered)_jk_([br])$")  # "white_jk_r": red joker


def _is_author_tail(tail: str) -> bool:
    tail = re.sub(r"\d+$", "", tail)  # "jarno_vasamaa4" -> "jarno_vasamaa"
    if not tail:
        return False
    return any(a == tail or (a.startswith(tail) and len(tail) >= _MIN_PARTIAL_AUTHOR) for a in OPENCLIPART_AUTHORS)


def _strip_variants(tokens: list[str]) -> list[str]:
    while tokens and _VARIANT_TOKEN.match(tokens[-1]):
        tokens = tokens[:-1]
    return tokens


def _card_caption(stem: str) -> str | None:
    """"bordered_h_k" -> "king of hearts playing card"; None for any other name."""
    joker = _JOKER_NAME.match(stem.lower())
    if joker:
        return f"{'black' if joker.group(2) == 'b' else 'red'} joker playing card"
    match = _CARD_NAME.match(stem.lower())
    if not match:
        return None
    rank = _CARD_RANKS.get(match.group(3), match.group(3))
    return f"{rank} of {_CARD_SUITS[match.group(2)]} playing card"


def clean_clipart_name(stem: str) -> str:
    """A caption from an openclipart file name: "2_dead_frogs_lumen_desig_01" -> "dead frogs"."""
    card = _card_caption(stem)
    if card:
        return card
    tokens = _strip_variants([t for t in stem.lower().split("_") if t])
    for start in range(len(tokens)):  # longest tail first: a name that is all author gives ""
        if _is_author_tail("_".join(tokens[start:])):
            tokens = _strip_variants(tokens[:start])
            break
    words = []
    for token in tokens:
        for word in re.split(r"[-\s.]+", token):
            if re.search(r"\d", word) and not word.isdigit():
                word = re.sub(r"\d+$", "", word)  # "arrow1" -> "arrow"; "95pt06step" stays digit-laden
            if word and not re.search(r"\d", word) and (len(word) > 1 or word == "a") and word not in _JUNK_WORDS:
                words.append(word)
    return " ".join(words)


def openclipart_records(split: str | None = None, seed: int = 0, n: int | None = None) -> list[ImageTextRecord]:
    """Every openclipart PNG, hash-split; label = top-level category folder ("animals", "food", ...).

    caption = `clean_clipart_name(file stem)`, or the image's own folder name when the file name
    holds no words (e.g. an author name only). Images are RGBA PNGs: open with `open_image`.
    """
    _check_split(split)
    root = assets.require("openclipart")
    records = []
    for path in sorted(root.rglob("*.png")):
        relative = path.relative_to(root)
        if len(relative.parts) < 2:
            continue  # a stray file outside the category folders has no label
        label = relative.parts[0].replace("_", " ")
        caption = clean_clipart_name(path.stem) or relative.parts[-2].replace("_", " ").lower()
        record_id = f"openclipart/{relative.with_suffix('').as_posix()}"
        records.append(ImageTextRecord(record_id, path, [caption], label, hash_split(record_id, seed)))
    return _keep(records, split, n)
