"""Tiny stand-ins for every file the `--preset paper` recipe reads, written from the shapes world.

`vlbridge study --preset paper --dry-run` (see `vlbridge.study.paper.dry_run`) runs the real
recipe on these instead of CC3M / COCO / NoCaps / VQAv2 / GPT-J / CLIP / BEiT / NF-ResNet50:
each stand-in has the on-disk format and the architecture family of the real thing, only tiny,
so every reader and loader of the paper path runs for real in about a minute on a CPU.

    paths = build_standins(Path("runs/dry/standins"))   # -> PaperPaths pointing at the files

What is written (under `root`), and what it mirrors:
    cc3m/000000.tar, 000001.tar   CC3M as img2dataset writes it: webdataset shards, one JPEG and
                                  one caption per sample, no split field
    coco/dataset_coco.json        Karpathy's split file: test / val / restval / train entries
                                  (filepath + filename, cocoid, sentences[].raw); the train2014
                                  images are absent, as they are from a val2014 folder
    coco/val2014/                 COCO_val2014_%012d.jpg: the caption images and the VQA images
    nocaps/nocaps_val_4500_captions.json + nocaps/validation/  NoCaps val: images with domain
                                  in-domain / near-domain / out-domain (shapes-world domains),
                                  captions in "annotations"
    vqav2/v2_OpenEnded_mscoco_val2014_questions.json, v2_mscoco_val2014_annotations.json
                                  VQAv2 val: data_subtype val2014, 10 answers per question,
                                  answer_type yes/no | number | other, multiple_choice_answer
    gpt-j-6b/                     GPTJForCausalLM (2 layers, width 64, rotary) + tokenizer, saved
                                  with save_pretrained; the tokenizer is a byte-level BPE built
                                  as GPT-J's (GPT-2 scheme, <|endoftext|> = BOS = EOS, no BOS
                                  added to text), trained with `tokenizers` on the stand-in
                                  texts: 600 tokens instead of 50k keeps generation fast on a CPU
    RN50x16.pt                    OpenAI TorchScript archive of a ModifiedResNet CLIP shaped like
                                  RN50x16 (QuickGELU, 64-wide heads, attention pooling, 12 -> 3
                                  side grid); load_clip infers the architecture from the weights
    ViT-B-32.pt                   the same for a ViT CLIP shaped like ViT-B/32 (patch 32): the
                                  CLIP-S / RefCLIP-S scorer
    beit-large-patch16-224-pt22k/ BeitModel (2 layers, width 32, shared relative position bias,
                                  mask token, as the pt22k checkpoint) + BeitImageProcessor config
    beit-large-patch16-224-pt22k-ft22k/  the same shape saved as BeitForImageClassification (as the
                                  ft22k checkpoint: a labels head, no mask token), other weights
    nf_resnet50.safetensors       timm nf_resnet50 at full size with random weights (classifier
                                  included, as timm's released files hold it)

Everything is seeded, so the same root gets the same stand-ins.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import warnings
from collections import Counter
from pathlib import Path

import torch
from PIL import Image

from vlbridge.data.records import ImageTextRecord, VQARecord
from vlbridge.study.config import PaperPaths

log = logging.getLogger(__name__)

STANDIN_SEED = 0  # every stand-in is a pure function of this seed
BEIT_FT_LABELS = 7  # the ft22k stand-in's label head (the real one has 21,841 ImageNet-22k classes)
IMAGE_SIZE = (96, 72)  # stand-in photos are landscape (W, H), as most COCO / CC3M images are
N_CC3M = 16  # training pairs, written as two shards
CC3M_SHARD_SIZE = 8  # samples per shard
N_COCO_TEST = 6  # Karpathy test images (the captioning set)
N_COCO_OTHER = 2  # val images, plus as many restval / train entries
N_NOCAPS = 6  # NoCaps validation images, cycling in / near / out
N_VQA_IMAGES = 6  # VQAv2 images (several questions each; 4 shots need 5)
COCO_TEST_ID0 = 100_000  # cocoid of the first Karpathy test image
VQA_IMAGE_ID0 = 200_000  # image_id of the first VQAv2 image
NOCAPS_DOMAINS = {"in": "in-domain", "near": "near-domain", "out": "out-domain"}  # shapes -> NoCaps names
VQAV2_TYPES = {"yes/no": "yes/no", "count": "number"}  # shapes answer type -> VQAv2's (else "other")
RN_VISION = {"image_size": 96, "layers": [1, 1, 2, 1], "width": 8}  # RN50x16: 384 px, (6, 8, 18, 8), width 96
VIT_VISION = {"image_size": 64, "layers": 1, "width": 64, "patch_size": 32}  # ViT-B/32: 224 px, 12 layers, width 768
CLIP_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}  # OpenAI text tower, tiny
CLIP_EMBED_DIM = 32  # joint embedding width of both tiny CLIPs
TOKENIZER_VOCAB = 600  # stand-in BPE vocabulary (GPT-J's: 50257 tokens)
GPTJ_EOS = "<|endoftext|>"  # GPT-J's BOS = EOS token


# ------------------------------------------------------------------------------------ images
def jpeg_bytes(image: Image.Image, size: tuple[int, int] = IMAGE_SIZE) -> bytes:
    """The image resized to `size` (W, H) as JPEG bytes (CC3M and COCO images are JPEGs)."""
    buffer = io.BytesIO()
    image.convert("RGB").resize(size, Image.BICUBIC).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _write_jpeg(path: Path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(image))


def coco_file_name(image_id: int) -> str:
    return f"COCO_val2014_{image_id:012d}.jpg"


# ------------------------------------------------------------------------------------ data
def write_cc3m_shards(folder: Path) -> str:
    """CC3M-like webdataset shards (one caption, no split) -> the brace pattern that reads them."""
    from vlbridge.data.formats import export_records
    from vlbridge.data.shapes import image_text_records

    records = [
        ImageTextRecord(f"{index:09d}", jpeg_bytes(record.image), [record.captions[0]])
        for index, record in enumerate(image_text_records(N_CC3M, split="train", seed=STANDIN_SEED))
    ]
    summary = export_records(records, folder, "wds", shard_size=CC3M_SHARD_SIZE, progress=False)
    return summary.read_back.removeprefix("wds:")


def _karpathy_entry(record: ImageTextRecord, image_id: int, split: str, first_sentence: int) -> dict:
    folder = "train2014" if split in ("train", "restval") else "val2014"
    filename = f"COCO_{folder}_{image_id:012d}.jpg"
    sentences = [{"tokens": caption.lower().rstrip(".").split(), "raw": caption, "imgid": image_id,
                  "sentid": first_sentence + number} for number, caption in enumerate(record.captions[:5])]
    return {"filepath": folder, "filename": filename, "imgid": image_id, "cocoid": image_id, "split": split,
            "sentids": [s["sentid"] for s in sentences], "sentences": sentences}


def write_coco_karpathy(json_path: Path, image_dir: Path) -> None:
    """Karpathy's dataset_coco.json over shapes-world images; test and val images go to `image_dir`."""
    from vlbridge.data.shapes import image_text_records

    test = image_text_records(N_COCO_TEST, split="test", seed=STANDIN_SEED)
    other = image_text_records(2 * N_COCO_OTHER, split="val", seed=STANDIN_SEED)
    splits = ["test"] * N_COCO_TEST + ["val"] * N_COCO_OTHER + ["restval"] * (N_COCO_OTHER - 1) + ["train"]
    entries = []
    for number, (record, split) in enumerate(zip(test + other, splits)):
        image_id = COCO_TEST_ID0 + number
        entries.append(_karpathy_entry(record, image_id, split, first_sentence=5 * number))
        if split in ("test", "val"):  # train2014 images are not in a val2014 folder
            _write_jpeg(image_dir / coco_file_name(image_id), record.image)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"images": entries, "dataset": "coco"}))


def write_nocaps(json_path: Path, image_dir: Path) -> None:
    """NoCaps val JSON: images with domains (in / near / out cycle) + caption annotations."""
    from vlbridge.data.shapes import image_text_records

    images, annotations = [], []
    for number, record in enumerate(image_text_records(N_NOCAPS, split="val", seed=STANDIN_SEED + 1)):
        file_name = f"{number:016x}.jpg"  # Open Images ids are 16 hex digits
        _write_jpeg(image_dir / file_name, record.image)
        images.append({"id": number, "file_name": file_name, "open_images_id": file_name[:-4],
                       "height": IMAGE_SIZE[1], "width": IMAGE_SIZE[0], "domain": NOCAPS_DOMAINS[record.domain]})
        annotations += [{"image_id": number, "id": len(annotations) + k, "caption": caption}
                        for k, caption in enumerate(record.captions)]
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"info": {"description": "vlbridge NoCaps stand-in"}, "licenses": [],
                                     "images": images, "annotations": annotations}))


def _vqav2_annotation(record: VQARecord, image_id: int, question_id: int) -> dict:
    majority = Counter(answer.strip() for answer in record.answers).most_common(1)[0][0]
    return {
        "question_id": question_id, "image_id": image_id, "question_type": " ".join(record.question.split()[:2]),
        "answer_type": VQAV2_TYPES.get(record.answer_type, "other"), "multiple_choice_answer": majority,
        "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": k + 1}
                    for k, answer in enumerate(record.answers)],
    }


def write_vqav2(questions_path: Path, annotations_path: Path, image_dir: Path) -> None:
    """VQAv2 val questions + annotations (10 answers each); images as COCO_val2014_<id>.jpg."""
    from vlbridge.data.shapes import vqa_records

    questions, annotations = [], []
    image_ids: dict[str, int] = {}  # shapes image id -> COCO-style integer id
    asked: Counter = Counter()  # questions so far per image
    for record in vqa_records(N_VQA_IMAGES, split="val", seed=STANDIN_SEED + 2):
        if record.image_id not in image_ids:
            image_ids[record.image_id] = VQA_IMAGE_ID0 + len(image_ids)
            _write_jpeg(image_dir / coco_file_name(image_ids[record.image_id]), record.image)
        image_id = image_ids[record.image_id]
        question_id = image_id * 1000 + asked[image_id]  # VQAv2 numbering: image id, then question index
        asked[image_id] += 1
        questions.append({"image_id": image_id, "question": record.question, "question_id": question_id})
        annotations.append(_vqav2_annotation(record, image_id, question_id))
    common = {"info": {"description": "vlbridge VQAv2 stand-in"}, "license": {}, "data_subtype": "val2014",
              "data_type": "mscoco"}
    questions_path.parent.mkdir(parents=True, exist_ok=True)
    questions_path.write_text(json.dumps({**common, "task_type": "Open-Ended", "questions": questions}))
    annotations_path.write_text(json.dumps({**common, "annotations": annotations}))


# ------------------------------------------------------------------------------------ models
def stand_in_corpus() -> list[str]:
    """Every caption, question and answer the stand-in data holds (the tokenizer's training text)."""
    from vlbridge.data.shapes import image_text_records, vqa_records

    texts = [c for r in image_text_records(N_CC3M, split="train", seed=STANDIN_SEED) for c in r.captions]
    texts += [c for r in image_text_records(N_COCO_TEST, split="test", seed=STANDIN_SEED) for c in r.captions]
    texts += [c for r in image_text_records(2 * N_COCO_OTHER, split="val", seed=STANDIN_SEED) for c in r.captions]
    texts += [c for r in image_text_records(N_NOCAPS, split="val", seed=STANDIN_SEED + 1) for c in r.captions]
    for record in vqa_records(N_VQA_IMAGES, split="val", seed=STANDIN_SEED + 2):
        texts += [f"Q: {record.question} A: {answer}\n" for answer in sorted(set(record.answers))]
    return texts + ["A picture of"]


def train_bpe_tokenizer(texts: list[str], vocab_size: int = TOKENIZER_VOCAB):
    """A byte-level BPE like GPT-J's (GPT-2's scheme, `<|endoftext|>` as BOS and EOS), trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[GPTJ_EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=GPTJ_EOS, eos_token=GPTJ_EOS,
                                   unk_token=GPTJ_EOS)


def write_gptj(folder: Path) -> None:
    """A 2-layer random GPT-J with a byte-level BPE tokenizer, both saved with save_pretrained."""
    from transformers import GPTJConfig, GPTJForCausalLM

    tokenizer = train_bpe_tokenizer(stand_in_corpus())
    config = GPTJConfig(
        vocab_size=len(tokenizer), n_positions=2048, n_embd=64, n_layer=2, n_head=4, rotary_dim=8,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )  # GPT-J 6B: n_embd 4096, 28 layers, 16 heads, rotary_dim 64, 2048 positions, 50400 vocab rows
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(STANDIN_SEED)
        model = GPTJForCausalLM(config).eval()
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


def openai_style_clip(vision_cfg: dict, seed: int) -> torch.nn.Module:
    """A random open_clip CLIP with OpenAI's conventions (QuickGELU, 64-wide attention heads)."""
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return open_clip.CLIP(CLIP_EMBED_DIM, dict(vision_cfg), dict(CLIP_TEXT), quick_gelu=True).eval()


def write_openai_torchscript(model: torch.nn.Module, path: Path) -> None:
    """Save `model` as OpenAI released CLIPs: a traced TorchScript archive holding every weight.

    Only encode_image / encode_text are traced (OpenAI's files also trace forward, which no
    loader reads), without trace checking: a third of the time on 2 CPU cores.
    """
    side = model.visual.image_size
    side = side[0] if isinstance(side, (tuple, list)) else side
    images = torch.zeros(2, 3, side, side)  # (B, 3, H, W)
    tokens = torch.zeros(2, CLIP_TEXT["context_length"], dtype=torch.long)  # (B, L)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation and tracer notes: the format is the point
        traced = torch.jit.trace_module(model, {"encode_image": (images,), "encode_text": (tokens,)}, check_trace=False)
        torch.jit.save(traced, str(path))


def write_beit(folder: Path, labels: int = 0, seed: int = STANDIN_SEED) -> None:
    """A tiny BeitModel shaped like BEiT-large pt22k, with its image processor config.

    `labels` > 0 writes a BeitForImageClassification with that many classes instead, as the
    pt22k-ft22k checkpoint is saved (the encoder loads its BeitModel part).
    """
    from transformers import BeitConfig, BeitForImageClassification, BeitImageProcessor, BeitModel

    config = BeitConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, use_mask_token=not labels, use_absolute_position_embeddings=False,
        use_relative_position_bias=False, use_shared_relative_position_bias=True, layer_scale_init_value=0.1,
        use_mean_pooling=True, num_labels=max(labels, 2),
    )  # BEiT-large pt22k: 224 px, patch 16, width 1024, 24 layers, 16 heads (ft22k: 21841 labels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = (BeitForImageClassification(config) if labels else BeitModel(config)).eval()
    model.save_pretrained(str(folder))
    processor = BeitImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False,
                                   image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])  # pt22k's normalisation
    processor.save_pretrained(str(folder))


def write_nf_resnet50(path: Path) -> None:
    """timm nf_resnet50 (full size, 1000-class head) with seeded random weights as safetensors."""
    import timm
    from safetensors.torch import save_file

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(STANDIN_SEED)
        model = timm.create_model("nf_resnet50", pretrained=False)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))


# ------------------------------------------------------------------------------------ all
def build_standins(root: str | Path) -> PaperPaths:
    """Write every stand-in under `root` (emptied first) and return the paper paths pointing at them."""
    root = Path(root)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    coco_images = root / "coco" / "val2014"
    paths = PaperPaths(
        cc3m_shards=write_cc3m_shards(root / "cc3m"),
        coco_karpathy=str(root / "coco" / "dataset_coco.json"),
        coco_images=str(coco_images),
        nocaps_json=str(root / "nocaps" / "nocaps_val_4500_captions.json"),
        nocaps_images=str(root / "nocaps" / "validation"),
        vqav2_questions=str(root / "vqav2" / "v2_OpenEnded_mscoco_val2014_questions.json"),
        vqav2_annotations=str(root / "vqav2" / "v2_mscoco_val2014_annotations.json"),
        vqav2_images=str(coco_images),  # VQAv2 val asks about COCO val2014 images
        lm=str(root / "gpt-j-6b"),
        clip_rn50x16=str(root / "RN50x16.pt"),
        clip_scorer=str(root / "ViT-B-32.pt"),
        beit_large=str(root / "beit-large-patch16-224-pt22k"),
        beit_large_ft22k=str(root / "beit-large-patch16-224-pt22k-ft22k"),
        nf_resnet50=str(root / "nf_resnet50.safetensors"),
    )
    write_coco_karpathy(Path(paths.coco_karpathy), coco_images)
    write_nocaps(Path(paths.nocaps_json), Path(paths.nocaps_images))
    write_vqav2(Path(paths.vqav2_questions), Path(paths.vqav2_annotations), coco_images)
    write_gptj(Path(paths.lm))
    write_openai_torchscript(openai_style_clip(RN_VISION, STANDIN_SEED + 3), Path(paths.clip_rn50x16))
    write_openai_torchscript(openai_style_clip(VIT_VISION, STANDIN_SEED + 4), Path(paths.clip_scorer))
    write_beit(Path(paths.beit_large), seed=STANDIN_SEED + 6)  # not the random twin's seed: the two rows differ
    write_beit(Path(paths.beit_large_ft22k), labels=BEIT_FT_LABELS, seed=STANDIN_SEED + 5)
    write_nf_resnet50(Path(paths.nf_resnet50))
    log.info("paper stand-ins written to %s", root)
    return paths
