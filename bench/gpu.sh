#!/usr/bin/env bash
# GPU figures for docs/BENCHMARKS.md in one short run (about 4 minutes on an H100/H200).
#
#   OUT=runs/gpu bash bench/gpu.sh
#
# Runs from a checkout with `src/` on PYTHONPATH (no install needed where torch, timm and
# transformers are present): the CLIP training step against open_clip's trainer for ViT-B-32 in
# bf16 with MFU, a short end-to-end `vlbridge train clip` on the GPU (bf16 autocast path, shapes
# world only), and the LiMBeR step benchmark (random SmolLM2-shaped LM when the asset is absent).
set -u
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PY:-python3}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"; } 2>&1 | tee "$OUT/gpu.txt"
timeout 150 $PY bench/clip_train.py --arch ViT-B-32 --batch-size 256 --steps 20 --rounds 3 2>&1 | tee "$OUT/clip_train_b256.txt"
timeout 120 $PY bench/clip_train.py --arch ViT-B-32 --batch-size 512 --steps 10 --rounds 3 2>&1 | tee "$OUT/clip_train_b512.txt"
timeout 150 $PY -m vlbridge train clip --out /tmp/vlbridge-gpu-clip steps=60 batch_size=512 device=cuda data.workers=8 \
    data.twemoji=false data.openclipart=false eval.every=30 checkpoint_every=0 2>&1 | tail -n 20 | tee "$OUT/train_clip.txt"
cp /tmp/vlbridge-gpu-clip/metrics.csv "$OUT/train_clip_metrics.csv"
timeout 120 $PY bench/limber_step.py --device cuda --encoder random:timm:resnet50 --steps 10 2>&1 | tee "$OUT/limber_step.txt"
