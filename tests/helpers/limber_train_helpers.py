"""Tiny on-disk models for the LiMBeR training / captioning / VQA protocol tests.

Everything is built from random weights and saved in the real formats, then loaded back
through the real loaders (nothing is downloaded):
- `make_tiny_lm(dir)`: a 2-layer Llama (hidden 32) with helpers.tiny_lm's byte-level BPE tokenizer
  (EOS doubling as pad), saved with `save_pretrained` (loads via `FrozenLM.from_pretrained`).
- `make_tiny_encoder(dir)`: timm's `test_resnet` with random weights saved as safetensors; its
  spec `timm:test_resnet@FILE` goes through `vlbridge.models.registry.build_encoder`.
- `tiny_records(n)`: shapes-world image-caption records at 32 px.
- `ddp_train_worker`: one torchrun-like gloo process of the DDP test (port from helpers.free_port).
"""

from __future__ import annotations

from pathlib import Path

import torch

from helpers.tiny_lm import train_tokenizer


def make_tiny_lm(out_dir: Path, seed: int = 0) -> Path:
    """Save a 2-layer random Llama + tokenizer under out_dir; return out_dir."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = train_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(out_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    return out_dir


def make_tiny_encoder(out_dir: Path, seed: int = 0) -> str:
    """timm test_resnet with random weights saved as safetensors; returns its encoder spec."""
    import timm
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = timm.create_model("test_resnet", pretrained=False)
    path = out_dir / "test_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return f"timm:test_resnet@{path}"


def tiny_records(n: int, split: str = "train", seed: int = 0, image_size: int = 32, domain: str | None = None):
    from vlbridge.data.shapes import image_text_records

    return image_text_records(n, split=split, seed=seed, image_size=image_size, domain=domain)


def ddp_train_worker(rank: int, world_size: int, port: int, config_dict: dict, out_dir: str, result_path: str) -> None:
    """One torchrun-like process: join a gloo group, train, rank 0 saves projector + losses."""
    import os

    os.environ.update(
        {"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )
    torch.set_num_threads(1)
    from vlbridge.config import from_dict
    from vlbridge.runtime import cleanup, init_distributed
    from vlbridge.training.limber import LimberTrainConfig, train_limber

    env = init_distributed("cpu")
    try:
        result = train_limber(from_dict(LimberTrainConfig, config_dict), out_dir, env=env)
        if rank == 0:
            state = {k: v.detach().clone() for k, v in result.model.projector.state_dict().items()}
            torch.save({"projector": state, "losses": result.losses}, result_path)
    finally:
        cleanup(env)
