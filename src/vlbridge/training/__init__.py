"""Training: distributed set-up, checkpoints, the CLIP and LiMBeR training loops."""
