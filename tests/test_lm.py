"""FrozenLM: loads tiny random LMs of several architectures from disk; frozen, eval, tokenizes,
embeds, runs with a KV cache, hashes its parameters. Spec: vlbridge.models.lm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers.tiny_lm import ARCHITECTURES, save_tiny_lm
from vlbridge.errors import AssetMissingError, UserError
from vlbridge.models.lm import FrozenLM


@pytest.fixture(scope="module")
def lm_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lms")
    dirs = {arch: save_tiny_lm(root / arch, arch) for arch in ARCHITECTURES}
    dirs["llama-bos"] = save_tiny_lm(root / "llama-bos", "llama", add_bos=True)
    return dirs


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_loads_every_architecture_frozen_and_in_eval(lm_dirs, arch):
    lm = FrozenLM.from_pretrained(lm_dirs[arch])
    assert lm.name == arch
    assert lm.hidden_size == 32 and lm.vocab_size == len(lm.tokenizer)
    assert all(not p.requires_grad for p in lm.parameters())
    parent = torch.nn.Sequential(lm)
    parent.train()
    assert not lm.training and not lm.model.training
    assert not any(m.training for m in lm.model.modules())


def test_tokenize_adds_no_special_tokens_and_eos_on_request(lm_dirs):
    lm = FrozenLM.from_pretrained(lm_dirs["gpt2"])
    texts = ["a red circle", "Q: what colour? A: blue\n"]
    plain = lm.tokenize(texts)
    assert plain == [lm.tokenizer.encode(t, add_special_tokens=False) for t in texts]
    assert lm.eos_token_id not in plain[0]
    with_eos = lm.tokenize(texts, add_eos=True)
    assert with_eos == [row + [lm.eos_token_id] for row in plain]
    assert lm.decode(with_eos[1]) == texts[1]
    assert lm.pad_token_id == lm.eos_token_id  # the tiny tokenizer has no pad token
    with pytest.raises(TypeError):
        lm.tokenize("a single string")


def test_bos_models_are_detected_but_tokenize_still_adds_no_bos(lm_dirs):
    with_bos = FrozenLM.from_pretrained(lm_dirs["llama-bos"])
    without = FrozenLM.from_pretrained(lm_dirs["llama"])
    assert with_bos.prepend_bos and not without.prepend_bos
    assert with_bos.tokenizer("a red")["input_ids"][0] == with_bos.bos_token_id
    assert with_bos.tokenize(["a red"]) == without.tokenize(["a red"])


def test_newline_tokens_are_exactly_those_whose_text_has_a_newline(lm_dirs):
    lm = FrozenLM.from_pretrained(lm_dirs["gpt2"])
    expected = {i for i in range(lm.vocab_size) if "\n" in lm.tokenizer.decode([i])}
    assert lm.newline_token_ids == expected
    assert lm.tokenize(["\n"])[0][0] in lm.newline_token_ids


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_embed_and_forward_match_the_wrapped_model(lm_dirs, arch):
    lm = FrozenLM.from_pretrained(lm_dirs[arch])
    rows = lm.tokenize(["a red circle above a blue square", "a small green triangle on a white"])
    ids = torch.tensor([row[:6] for row in rows])  # (2, 6)
    assert torch.equal(lm.embed(ids), lm.model.get_input_embeddings().weight[ids])
    mask = torch.ones_like(ids)
    labels = ids.clone()
    labels[:, :2] = -100
    ours = lm(lm.embed(ids), mask, labels=labels)
    reference = lm.model(input_ids=ids, attention_mask=mask)
    assert torch.allclose(ours.logits, reference.logits, atol=1e-5)
    expected_loss = F.cross_entropy(reference.logits[:, :-1].reshape(-1, lm.vocab_size), labels[:, 1:].reshape(-1))
    assert torch.allclose(ours.loss, expected_loss, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_kv_cache_continuation_equals_full_forward(lm_dirs, arch):
    lm = FrozenLM.from_pretrained(lm_dirs[arch])
    embeds = torch.randn(2, 6, lm.hidden_size)
    mask = torch.ones(2, 6, dtype=torch.long)
    full = lm(embeds, mask).logits
    first = lm(embeds[:, :4], mask[:, :4], use_cache=True)
    rest = lm(embeds[:, 4:], mask, past_key_values=first.cache, use_cache=True, position_ids=torch.tensor([[4, 5]] * 2))
    assert torch.allclose(rest.logits, full[:, 4:], atol=1e-5)
    last_only = lm(embeds, mask, logits_to_keep=1).logits
    assert last_only.shape == (2, 1, lm.vocab_size) and torch.allclose(last_only[:, 0], full[:, -1], atol=1e-5)


def test_gradients_flow_through_to_inputs_but_not_into_weights(lm_dirs):
    lm = FrozenLM.from_pretrained(lm_dirs["llama"])
    embeds = torch.randn(1, 5, lm.hidden_size, requires_grad=True)
    labels = torch.tensor([[-100, 3, 4, 5, 6]])
    lm(embeds, torch.ones(1, 5, dtype=torch.long), labels=labels).loss.backward()
    assert embeds.grad is not None and embeds.grad.abs().sum() > 0
    assert all(p.grad is None for p in lm.parameters())


def test_parameter_hash_is_stable_and_sensitive(lm_dirs):
    first = FrozenLM.from_pretrained(lm_dirs["gpt2"])
    second = FrozenLM.from_pretrained(lm_dirs["gpt2"])
    assert first.parameter_hash() == second.parameter_hash()
    assert first.parameter_hash() != FrozenLM.from_pretrained(lm_dirs["llama"]).parameter_hash()
    with torch.no_grad():
        next(second.parameters()).view(-1)[0] += 1e-3
    assert first.parameter_hash() != second.parameter_hash()


def test_dtype_and_missing_directory_errors(lm_dirs, tmp_path):
    half = FrozenLM.from_pretrained(lm_dirs["gpt2"], dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.embed(torch.tensor([[1]])).dtype == torch.bfloat16
    with pytest.raises(AssetMissingError, match="config.json"):
        FrozenLM.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(UserError):
        FrozenLM.from_pretrained(tmp_path / "broken")
