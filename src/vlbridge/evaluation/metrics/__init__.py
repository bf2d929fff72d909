"""Metrics equal to the reference tools: CIDEr-D, BLEU, ROUGE-L, PTB tokenization, CLIP-S, VQA accuracy."""
