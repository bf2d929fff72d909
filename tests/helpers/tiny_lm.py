"""Test helpers: tiny random causal LMs of several architectures with a tiny trained tokenizer.

`save_tiny_lm(folder, arch)` trains a byte-level BPE tokenizer on a few sentences (so any
text, newlines included, tokenizes), builds a 2-layer random model of `arch` ("gpt2",
"llama", "opt", "gptj") and writes both with `save_pretrained`, the real on-disk format that
`FrozenLM.from_pretrained` loads. Nothing is downloaded. Used by the LiMBeR test files.
"""

from __future__ import annotations

from pathlib import Path

import torch

CORPUS = [
    "a picture of a red circle above a blue square",
    "a small green triangle on a white background",
    "Q: what colour is the circle? A: red",
    "Q: how many shapes are there? A: two\n",
    "a large yellow star to the left of a purple heart.\n",
    "there is a black cross and an orange diamond\n\n",
]
EOS = "<|endoftext|>"
BOS = "<s>"
ARCHITECTURES = ("gpt2", "llama", "opt", "gptj")


def train_tokenizer(add_bos: bool = False):
    """A byte-level BPE PreTrainedTokenizerFast (~300 tokens) with EOS (and BOS prepended if add_bos)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=[EOS, BOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    if add_bos:
        bos_id = tokenizer.token_to_id(BOS)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
        )
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, bos_token=BOS)


def tiny_config(arch: str, vocab_size: int, eos_id: int, bos_id: int):
    """2-layer, 32-wide config of `arch` with a large init range (peaky, varied predictions)."""
    from transformers import GPT2Config, GPTJConfig, LlamaConfig, OPTConfig

    common = dict(vocab_size=vocab_size, eos_token_id=eos_id, bos_token_id=bos_id, pad_token_id=eos_id)
    if arch == "gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=256, initializer_range=0.3, **common)
    if arch == "llama":
        return LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.3, **common,
        )  # fmt: skip
    if arch == "opt":
        return OPTConfig(
            hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=256,
            word_embed_proj_dim=32, init_std=0.3, **common,
        )  # fmt: skip
    if arch == "gptj":
        return GPTJConfig(n_embd=32, n_layer=2, n_head=2, rotary_dim=8, n_positions=256, initializer_range=0.3, **common)
    raise ValueError(f"unknown tiny architecture {arch!r}; known: {ARCHITECTURES}")


def save_tiny_lm(folder: Path, arch: str = "gpt2", seed: int = 0, add_bos: bool = False) -> Path:
    """Write a random tiny `arch` LM + tokenizer to `folder` with save_pretrained; returns folder."""
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    tokenizer = train_tokenizer(add_bos=add_bos)
    config = tiny_config(arch, len(tokenizer), tokenizer.eos_token_id, tokenizer.bos_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
