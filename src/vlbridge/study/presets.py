"""The study's presets: partial override trees of `StudyConfig`, one per named preset.

    quick    every stage at toy size (a smoke test; CI runs it)
    default  the embedded-default experiment (`make demo`), sized for 2 CPU cores
    full     the powered version: 3 seeds, >= 500 questions, >= 1000 NLL captions, an independent scorer
    paper    the LiMBeR paper's recipe at real scale, from local paths (`PaperPaths`)

`vlbridge.study.config.load_study_config` applies one of them on top of the dataclass defaults,
then a config file, then key=value overrides. Mapping fields a preset sets (encoders, caption
sets) replace the default's mapping whole. Held-out Twemoji sets are `first=N`, the first N test
emoji in Twemoji's order (the sets the recorded numbers come from); `n=N` would draw a seeded subset.

PAPER_PRESET — where the recipe's numbers come from (the paper and its code, github.com/jmerullo/limber,
configs/*.yml and image_prefix.py):
- CLIP RN50x16: the 12x12x3072 grid under the attention pooling -> 144 prefix tokens
  (`clip-grid:`; the OpenAI file without an architecture name, so load_clip infers RN50x16
  with OpenAI's QuickGELU; naming open_clip's "RN50x16" would build GELU instead).
- NF-ResNet50 (ImageNet-supervised): the pooled 2048-d feature at 384 px (image_size 384) ->
  k = 2 prefix tokens (the code's MultimodalConfig default image_seq_len, as in Frozen; the
  released nfrn50_4096_linear.yml sets 1: pass limber.train.num_prefix_tokens=1 for that).
- BEiT-large pt22k (self-supervised): last_hidden_state without CLS, 14x14 = 196 tokens
  (`hf:...:grid`), as the code's BeitWrapper.
- random baselines: the same architectures with random weights (random-clip, random-supervised,
  random-self-supervised: the code's configs/beit_random_linear.yml builds BeitModel from the
  pt22k config without its weights).
- "BEIT FT." (`beit-ft22k`): BEiT-large pt22k fine-tuned on ImageNet-22k labels
  (microsoft/beit-large-patch16-224-pt22k-ft22k, configs/beit_ft_linear.yml), still frozen:
  its 196 grid tokens like BEiT's. The paper's tuned NF-ResNet50 row (encoder trained with the
  projector) is not in the preset: the study's stages train projectors on cached features
  (`vlbridge train limber --tune-encoder optim.encoder_lr=2e-6` trains it; docs/STUDY.md, fidelity table).
- GPT-J 6B from paper.lm, weights in bfloat16 as the code loads it (fp32 in a CPU dry run).
- training: 15,000 steps, batch 256 (configs' batch_size; their launcher also set 8 gradient
  accumulation steps on 16 GPUs, 2048 images per step under HF Trainer's reading, which the
  paper does not state), AdamW lr 8e-4, betas 0.9 / 0.95, no weight decay,
  gradient clipping 1.0, warmup 100 steps, dropout 0.1 on the projected image prefix (after
  the linear map, as image_prefix.py). hf_main.py's own scheduler decays the lr linearly
  over 300,000 steps, i.e. to 95% of the peak by step 15,000: `min_lr_ratio` 0.95 ends the cosine
  there. (Under DeepSpeed, as on the authors' 16 GPUs, the config's scheduler may instead have
  decayed to 0 at step 15,000: `limber.train.optim.min_lr_ratio=0`; docs/STUDY.md has both readings.)
  On fewer GPUs, `limber.train.grad_accum_steps=A` runs each process's share of the 256 as A
  micro-batches with the same update (e.g. 8 on one GPU: 32 sequences through GPT-J at a time).
- VQA: the released code has no evaluation scripts; the first author's description (jmerullo/limber
  issue #2) gives the prompt `<image> Q: {question} A:` and MAGMA's answer preprocessing (the
  answer stripped, then cut to the word count of the longest ground-truth answer), scored with
  the official VQA metric: `vqa_template` and `vqa_truncate_answers`.
Every choice and every remaining deviation, with its source: docs/STUDY.md, "Fidelity to the
paper's recipe".
"""

from __future__ import annotations

from typing import Any

from vlbridge.evaluation.vqa import QUESTION_TEMPLATE

LADDER = ("random", "self-supervised", "labels", "clip")  # the supervision ladder, least language first
LANGUAGE_SUPERVISION = {"random": "random", "self-supervised": "none", "labels": "labels", "clip": "captions"}
DEFAULT_ENCODERS = {rung: f"tower:{{tower:{rung}}}" for rung in LADDER}  # study key -> encoder spec ({tower:R}: rung R)
REFERENCE_ENCODERS = {  # external reference rows (the full preset adds them): ImageNet-supervised and its twin
    "efficientnet": "efficientnet-lite0:128px",  # 128 px for the 64 px images
    "random-efficientnet": "random:efficientnet-lite0:128px",
}
DEFAULT_TWINS = {"self-supervised": "random", "labels": "random", "clip": "random"}  # trained -> random-init twin


NFRN50_PX = 384  # NF-ResNet50 input side in the paper's code (configs/nfrn50_4096_linear.yml)
DRY_RUN_NFRN50_PX = 64  # the dry run's NF-ResNet50 input side (same network, 36x fewer pixels)
VQAV2 = "vqav2:{paper.vqav2_questions}?annotations={paper.vqav2_annotations}&images={paper.vqav2_images}"

PAPER_PRESET: dict[str, Any] = {
    "device": "auto",  # GPU when there is one: GPT-J 6B needs it
    "train_encoders": False,  # pretrained CLIP RN50x16, NF-ResNet50 and BEiT-large from disk
    "clip_table": {"datasets": []},  # the LiMBeR table only
    "limber": {
        "twins": {"clip": "random-clip", "supervised": "random-supervised", "self-supervised": "random-self-supervised"},
        "ladder": ["self-supervised", "supervised", "clip"],  # BEiT (none), NF-ResNet50 (labels), CLIP (captions)
        "ablations": False,
        "likelihood_set": "coco:{paper.coco_karpathy}?images={paper.coco_images}&split=test&n=1000",
        "text_ceiling": False,
        "vqa_per_type": 0,
        "shots": [0, 1, 2, 4],
        "encoders": {
            "clip": "clip-grid:{paper.clip_rn50x16}",  # 144 tokens of 3072
            "supervised": f"timm:nf_resnet50@{{paper.nf_resnet50}}:{NFRN50_PX}px",  # pooled 2048 -> k tokens
            "self-supervised": "hf:{paper.beit_large}:grid",  # 196 tokens of 1024
            "random-clip": "random:clip-grid:{paper.clip_rn50x16}",  # same architecture, random weights
            "random-supervised": f"random:timm:nf_resnet50:{NFRN50_PX}px",  # same architecture, random weights
            "random-self-supervised": "random:hf:{paper.beit_large}:grid",  # configs/beit_random_linear.yml
            "beit-ft22k": "hf:{paper.beit_large_ft22k}:grid",  # "BEIT FT.": frozen, configs/beit_ft_linear.yml
        },
        "train": {
            "lm": "{paper.lm}",
            "lm_dtype": "bfloat16",  # as the paper's code loads GPT-J: 12 GB of weights instead of 24
            "num_prefix_tokens": 2,  # k for the pooled NF-ResNet50 (grid encoders give their N)
            "dropout": 0.1,  # image_embed_dropout_prob
            "projector_init": "default",  # nn.Linear's init, as the paper's code (15k steps make up for it)
            "batch_size": 256,  # the configs' batch_size (global)
            "steps": 15000,  # train_steps
            "data": {"dataset": "wds:{paper.cc3m_shards}", "n": 0},  # all of CC3M
            "optim": {"lr": 8e-4, "beta1": 0.9, "beta2": 0.95, "weight_decay": 0.0, "grad_clip_norm": 1.0,
                      "warmup_steps": 100, "min_lr_ratio": 0.95},
        },
        "caption_sets": {
            "coco": "coco:{paper.coco_karpathy}?images={paper.coco_images}&split=test",
            "nocaps": "nocaps:{paper.nocaps_json}?images={paper.nocaps_images}",
        },
        "vqa_queries": VQAV2 + "&n=5000",  # seeded subset of VQAv2 val's 214k questions (each asked at 4 shot counts)
        "vqa_support": VQAV2,  # shots never show the query's own image (evaluation.vqa.choose_shots)
        "vqa_template": QUESTION_TEMPLATE,  # "Q: {question} A:", the authors' VQA prompt (jmerullo/limber issue #2)
        "vqa_truncate_answers": True,  # MAGMA's answer preprocessing, which the authors followed (same issue)
        "clip_scorer": "{paper.clip_scorer}",
    },
}

DRY_RUN_SIZES: dict[str, Any] = {  # on top of the recipe: seconds per stage on a CPU
    "limber": {
        "train": {"steps": 4, "batch_size": 4, "log_every": 1, "optim": {"warmup_steps": 1},
                  "data": {"extract_batch_size": 8}},
        "vqa_queries": VQAV2 + "&n=8",
        "likelihood_set": "coco:{paper.coco_karpathy}?images={paper.coco_images}&split=test&n=8",
        "batch_size": 8,
        "sample_images": 4,
    },
}


LADDER_MIX = "shapes?max_objects=2&n={shapes} + objects?max_objects=2&things=0.5&n={objects}"  # ladder training images
TRAIN_MIX = LADDER_MIX.format(shapes=14000, objects=6000)  # the default ladder's images (config default)
EVAL_OBJECTS = "objects?split=test&max_objects=2&things=0.5"  # held-out scenes the LM side is scored on


def _ladder(steps: int, batch: int, shapes: int, objects: int, eval_n: int) -> dict[str, Any]:
    """The supervision ladder's shared recipe: `vlbridge train clip`'s, on the mixed world (warmup: an
    eighth of the steps; peak lr LADDER_LR)."""
    return {"train": {"steps": steps, "batch_size": batch, "checkpoint_every": 0,
                      "optim": {"lr": LADDER_LR, "warmup_steps": max(1, steps // 8)},
                      "eval": {"every": 0, "n": eval_n},
                      "data": {"source": LADDER_MIX.format(shapes=shapes, objects=objects)}}}


# The default ladder: 320 steps x 256 images (81,920 pairs, the compute of 160 x 512). Measured on
# the CLIP rung alone (docs/STUDY.md, "Stability"), twice the updates at half the batch took the
# training-time zero-shot check from 83.1 / 49.4 / 57.1 % (seeds 0 / 1 / 2, 160 x 512) to
# 90.4 / 76.2 / 88.8 % (one run each): a batch of 512 in a 52-class world holds ~10 pictures of
# each class, all false negatives to each other, and 160 updates left the slow seeds mid-descent.
LADDER_STEPS, LADDER_BATCH = 320, 256
# Peak lr 2e-3 (train clip's default is 4e-3): at 320 x 256 it lifted the weakest seed from 76.2 to
# 91.9 % zero-shot (dataset templates, n = 520); seeds 0 / 1 / 2 gave 93.3 / 91.9 / 89.4 % (docs/STUDY.md).
LADDER_LR = 2e-3


def _limber(steps: int, n_train: int, nll: int, captions: int, vqa_images: int, per_type: int,
            demo_sets: int) -> dict[str, Any]:
    return {
        # LiMBeR's optimiser (AdamW 8e-4, betas 0.9/0.95) from a closed-form start whose ridge is
        # chosen on held-out images; k = 8 prefix vectors hold a whole short caption
        # features scaled to unit mean norm first: the ladder's towers give norms from 0.4 (random) to
        # 58 (CLIP), and Adam's per-weight steps would otherwise move their prefixes 100x apart
        "train": {"steps": steps, "batch_size": 16, "num_prefix_tokens": 8, "projector_init": "caption-ridge",
                  "feature_scale": "unit-norm",
                  "ridge_candidates": [1e-3, 1e-2, 1e-1, 1.0], "checkpoint_every": 0, "log_every": 1,
                  "data": {"dataset": "objects?max_objects=2&things=0.5", "n": n_train},
                  "optim": {"lr": 8e-4, "warmup_steps": max(1, steps // 6)}},
        "likelihood_set": f"{EVAL_OBJECTS}&n={nll}",
        "caption_sets": {"objects": f"{EVAL_OBJECTS}&n={captions}"},
        "vqa_queries": f"{EVAL_OBJECTS}&n={vqa_images}",
        "vqa_per_type": per_type,
        "vqa_support": "objects?split=train&max_objects=2&things=0.5&n=200",
        "demo_sets": demo_sets,
    }


CPU_PRESETS: dict[str, dict[str, Any]] = {
    "quick": {  # every stage at toy size (CI's smoke test): <= 4 minutes on 2 CPU cores
        "workers": 2,
        "ladder": _ladder(steps=8, batch=32, shapes=256, objects=256, eval_n=52),
        "clip_table": {"shifts": ["sketch", "blur"], "n_train": 104, "n_test": 52, "probe_c_steps": 2,
                       "probe_max_iter": 50},
        "limber": {**_limber(steps=3, n_train=64, nll=12, captions=4, vqa_images=4, per_type=2, demo_sets=2),
                   "batch_size": 8, "sample_images": 4},
    },
    "default": {  # the embedded-default experiment (`make demo`): <= 15 minutes on 2 CPU cores
        "workers": 2,  # two stages side by side, one torch thread each on 2 cores (docs/STUDY.md)
        "ladder": _ladder(steps=LADDER_STEPS, batch=LADDER_BATCH, shapes=14000, objects=6000, eval_n=520),
        "clip_table": {"n_train": 520, "n_test": 520, "probe_c_steps": 4, "probe_max_iter": 200},
        "limber": _limber(steps=12, n_train=768, nll=300, captions=64, vqa_images=60, per_type=20, demo_sets=5),
    },
    "full": {  # the powered version: 3 seeds, an independent scorer, the EfficientNet twin: <= 60 min on 2 cores
        "n_seeds": 3,
        "workers": 2,
        "scorer": {"independent": True},
        "ladder": _ladder(steps=LADDER_STEPS, batch=LADDER_BATCH, shapes=14000, objects=6000, eval_n=520),
        "clip_table": {"n_train": 1040, "n_test": 1040, "probe_c_steps": 4, "probe_max_iter": 200,
                       "probe_encoders": {**DEFAULT_ENCODERS, "efficientnet": REFERENCE_ENCODERS["efficientnet"]}},
        "limber": {**_limber(steps=24, n_train=1024, nll=1000, captions=200, vqa_images=200, per_type=100,
                             demo_sets=8),
                   "encoders": {**DEFAULT_ENCODERS, **REFERENCE_ENCODERS},
                   "reference_seeds": 1,  # seed 0 scores every row; seeds 1-2 the ladder's NLL and clip's VQA (runner.eval_parts)
                   "twins": {**DEFAULT_TWINS, "efficientnet": "random-efficientnet"}},
    },
}

PRESETS: dict[str, dict[str, Any]] = {**CPU_PRESETS, "paper": PAPER_PRESET}  # every preset by name
