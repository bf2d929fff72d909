"""Evaluation: zero-shot, linear probe, retrieval, robustness, captioning and VQA protocols."""
