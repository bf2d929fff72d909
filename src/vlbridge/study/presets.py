"""The study's presets: partial override trees of `StudyConfig`, one per named preset.

    quick    every stage at toy size (a smoke test; CI runs it)
    default  the embedded-default experiment (`make demo`), sized for 2 CPU cores
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
- random baselines: the same architectures with random weights (random-clip, random-supervised).
- GPT-J 6B from paper.lm, weights in bfloat16 as the code loads it (fp32 in a CPU dry run).
- training: 15,000 steps, batch 256 (configs' batch_size; their launcher also set 8 gradient
  accumulation steps on 16 GPUs, 2048 images per step under HF Trainer's reading, which the
  paper does not state), AdamW lr 8e-4, betas 0.9 / 0.95, no weight decay,
  gradient clipping 1.0, warmup 100 steps, dropout 0.1 on the image prefix (vlbridge applies
  it to the features before the projector). The code decays the lr linearly over 300,000
  steps, i.e. to 95% of the peak by step 15,000: `min_lr_ratio` 0.95 ends the cosine there.
  On fewer GPUs, `limber.train.grad_accum_steps=A` runs each process's share of the 256 as A
  micro-batches with the same update (e.g. 8 on one GPU: 32 sequences through GPT-J at a time).
"""

from __future__ import annotations

from typing import Any

from vlbridge.evaluation.vqa import FROZEN_TEMPLATE

NFRN50_PX = 384  # NF-ResNet50 input side in the paper's code (configs/nfrn50_4096_linear.yml)
DRY_RUN_NFRN50_PX = 64  # the dry run's NF-ResNet50 input side (same network, 36x fewer pixels)
VQAV2 = "vqav2:{paper.vqav2_questions}?annotations={paper.vqav2_annotations}&images={paper.vqav2_images}"

PAPER_PRESET: dict[str, Any] = {
    "device": "auto",  # GPU when there is one: GPT-J 6B needs it
    "train_clip": False,  # pretrained CLIP RN50x16 from paper.clip_rn50x16
    "train_ssl": False,  # pretrained BEiT-large from paper.beit_large
    "clip_table": {"datasets": []},  # the LiMBeR table only
    "limber": {
        "encoders": {
            "clip": "clip-grid:{paper.clip_rn50x16}",  # 144 tokens of 3072
            "supervised": f"timm:nf_resnet50@{{paper.nf_resnet50}}:{NFRN50_PX}px",  # pooled 2048 -> k tokens
            "self-supervised": "hf:{paper.beit_large}:grid",  # 196 tokens of 1024
            "random-clip": "random:clip-grid:{paper.clip_rn50x16}",  # same architecture, random weights
            "random-supervised": f"random:timm:nf_resnet50:{NFRN50_PX}px",  # same architecture, random weights
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
        "vqa_queries": VQAV2,
        "vqa_max_questions": 5000,  # seeded subset of VQAv2 val's 214k questions (each asked at 4 shot counts)
        "vqa_support": VQAV2,  # shots never show the query's own image (evaluation.vqa.choose_shots)
        "clip_scorer": "{paper.clip_scorer}",
    },
}

DRY_RUN_SIZES: dict[str, Any] = {  # on top of the recipe: seconds per stage on a CPU
    "limber": {
        "train": {"steps": 4, "batch_size": 4, "log_every": 1, "optim": {"warmup_steps": 1},
                  "data": {"extract_batch_size": 8}},
        "vqa_max_questions": 8,
        "batch_size": 8,
        "sample_images": 4,
    },
}


CPU_PRESETS: dict[str, dict[str, Any]] = {
    "quick": {  # a smoke test of every stage (CI): <= 3 minutes on 2 CPU cores
        "clip": {"steps": 30, "batch_size": 32, "eval": {"every": 0, "n": 52},
                 "data": {"shapes_n": 512, "twemoji": False, "openclipart": False}},
        "ssl": {"steps": 6, "batch_size": 16, "n_images": 64},
        "clip_table": {"datasets": ["shapes", "fashion-mnist"], "shifts": ["sketch"],
                       "n_train": 104, "n_test": 52, "probe_c_steps": 2, "probe_max_iter": 50},
        "limber": {"train": {"steps": 6, "batch_size": 8, "data": {"n": 64}, "projector_init": "caption-ridge",
                             "num_prefix_tokens": 8},
                   "caption_sets": {"shapes": "shapes?split=test&n=9", "twemoji": "twemoji?split=test&first=3"},
                   "vqa_queries": "shapes?split=test&n=2", "vqa_max_questions": 4,
                   "vqa_support": "shapes?split=train&n=8", "sample_images": 4,
                   "vqa_template": FROZEN_TEMPLATE},
    },
    "default": {  # the embedded-default experiment: <= 15 minutes on 2 CPU cores
        # `vlbridge train clip`'s default recipe (vl-tiny-rn, batch 512), 160 of its 180 steps for time
        "clip": {"steps": 160},
        "ssl": {"steps": 75},
        "clip_table": {"n_train": 250, "n_test": 250, "probe_c_steps": 4, "probe_max_iter": 200},
        # the frozen LM dominates (~3.3 s per step of 16 captions on 2 cores): the projector starts
        # from the closed-form caption-ridge fit on 768 images, then 8 gradient steps through the LM;
        # 8 prefix vectors hold a whole short caption (CIDEr-D of the CLIP projector 0.25, against 0.08 with 4)
        "limber": {"train": {"steps": 8, "batch_size": 16, "data": {"n": 768}, "num_prefix_tokens": 8,
                             "projector_init": "caption-ridge", "optim": {"lr": 1e-4, "warmup_steps": 2}},
                   "caption_sets": {"shapes": "shapes?split=test&n=48", "twemoji": "twemoji?split=test&first=16"},
                   "vqa_queries": "shapes?split=test&n=8", "vqa_max_questions": 20,
                   "vqa_support": "shapes?split=train&n=100",
                   # Frozen's wording: with SmolLM2-135M it reads the image better than "Q: A:" (docs/STUDY.md)
                   "vqa_template": FROZEN_TEMPLATE},
    },
}

PRESETS: dict[str, dict[str, Any]] = {**CPU_PRESETS, "paper": PAPER_PRESET}  # every preset by name
