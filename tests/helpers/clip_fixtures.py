"""Helpers for the CLIP tests: tiny random models saved in real on-disk formats, tiny configs.

Nothing here downloads: the HF CLIP tokenizer is built from the BPE merges that ship inside
open_clip, the BERT tokenizer from a small word list written by the test.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from helpers import free_port
from vlbridge.config import merge
from vlbridge.data.records import ImageTextRecord


WORDS = (
    "a an the photo picture of there is are shape shapes small large to left right top bottom centre "
    "red green blue yellow purple orange brown black circle square triangle star hexagon cross heart diamond"
).split()


def micro_config(**overrides):
    """A ClipTrainConfig for seconds-long runs: micro ViT, 32 px shapes, no web assets."""
    from vlbridge.training.clip import ClipTrainConfig

    base = {
        "model": {"arch": "vl-micro-vit"},
        "data": {"shapes_n": 48, "shapes_image_size": 32, "twemoji": False, "openclipart": False, "workers": 0},
        "optim": {"warmup_steps": 2, "lr": 1e-3},
        "eval": {"n": 52, "every": 0},
        "steps": 4, "batch_size": 8, "log_every": 1, "checkpoint_every": 0, "device": "cpu",
    }
    cfg = merge(ClipTrainConfig(), base)
    return merge(cfg, overrides)


def solid_images(n: int, size: int = 40) -> list[Image.Image]:
    """n distinct simple RGB images (coloured discs on grey)."""
    images = []
    for i in range(n):
        image = Image.new("RGB", (size, size + 6), (200, 200, 200))
        ImageDraw.Draw(image).ellipse((4 + i, 4, size - 4, size - 4 - i), fill=((60 * i) % 256, 120, (255 - 40 * i) % 256))
        images.append(image)
    return images


def records_with_bad(n_good: int, bad_path: Path) -> list[ImageTextRecord]:
    """n_good records from solid_images plus two unreadable ones (a missing file, junk bytes)."""
    records = [ImageTextRecord(f"good-{i}", im, [f"a picture number {i}", "a disc"]) for i, im in enumerate(solid_images(n_good))]
    bad_path.write_bytes(b"not an image")
    records.insert(1, ImageTextRecord("bad-bytes", bad_path, ["broken"]))
    records.insert(3, ImageTextRecord("bad-missing", bad_path.with_name("missing.png"), ["missing"]))
    return records


def bert_dir(root: Path) -> Path:
    """A tiny random BertModel + BertTokenizer saved with save_pretrained (stands in for MiniLM)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    root.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "."]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(root / "vocab.txt"))
    torch.manual_seed(3)
    config = BertConfig(vocab_size=len(vocab), hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=64)
    BertModel(config).eval().save_pretrained(str(root))
    tokenizer.save_pretrained(str(root))
    return root


def clip_bpe_files(root: Path, merges_kept: int = 400) -> tuple[Path, Path]:
    """vocab.json + merges.txt for a HF CLIPTokenizer, cut from open_clip's bundled BPE."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 1 + merges_kept]
    merges = [tuple(line.split()) for line in lines]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}), encoding="utf-8")
    (root / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    return root / "vocab.json", root / "merges.txt"


def hf_clip_dir(root: Path) -> Path:
    """A tiny random transformers CLIPModel + tokenizer + image processor saved with save_pretrained."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    vocab_file, merges_file = clip_bpe_files(root / "bpe")
    tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file))
    text = {"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": 20, "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": tokenizer.bos_token_id, "pad_token_id": tokenizer.pad_token_id}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}
    torch.manual_seed(5)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    model.save_pretrained(str(root))
    tokenizer.save_pretrained(str(root))
    processor.save_pretrained(str(root))
    return root


def _process_main(rank: int, fn, world_size: int, port: int, args: tuple) -> None:
    """One of the test's worker processes: torchrun-like environment, one thread, then `fn`."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    fn(rank, world_size, *args)


def run_processes(fn, world_size: int, *args) -> None:
    """Run fn(rank, world_size, *args) in `world_size` forked processes (gloo on CPU).

    fork, not spawn: the children reuse the modules the test already imported (seconds saved).
    """
    import torch.multiprocessing as mp

    mp.start_processes(_process_main, args=(fn, world_size, free_port(), args), nprocs=world_size, join=True, start_method="fork")
