"""The embedded SmolLM2-135M-Instruct through FrozenLM: loads from the asset directory, and greedy /
beam generation from soft prompts equal HF `generate` on it. Slow (loads 135M parameters); needs
the embedded asset (`make setup`). Spec: vlbridge.models.lm, vlbridge.models.generation."""

from __future__ import annotations

import pytest
import torch

from vlbridge.models.generation import GenerationConfig, generate, stop_token_ids
from vlbridge.models.limber import build_prompt_embeds

pytestmark = [pytest.mark.slow, pytest.mark.assets]


@pytest.fixture(scope="module")
def smollm2():
    from vlbridge import assets
    from vlbridge.models.lm import FrozenLM, default_lm_path

    if assets.locate_smollm2_converted() is None and assets.locate_smollm2_gguf() is None:
        pytest.skip("embedded SmolLM2 is not installed (make setup)")
    return FrozenLM.from_pretrained(default_lm_path())


def hf_cut(lm, out: torch.Tensor, stop_ids: list[int]) -> list[list[int]]:
    rows = []
    for row in out.tolist():
        cut = []
        for token in row:
            cut.append(token)
            if token in stop_ids:
                break
        rows.append(cut[:-1] if cut[-1:] == [lm.eos_token_id] else cut)
    return rows


def test_smollm2_loads_frozen_with_its_tokens(smollm2):
    lm = smollm2
    assert lm.hidden_size == 576 and lm.vocab_size == 49152
    assert not lm.prepend_bos and lm.eos_token_id == lm.tokenizer.eos_token_id
    assert lm.tokenize(["\n"])[0][0] in lm.newline_token_ids
    assert all(not p.requires_grad for p in lm.parameters())


def test_smollm2_greedy_and_beam_equal_hf(smollm2):
    lm = smollm2
    generator = torch.Generator().manual_seed(0)
    scale = lm.model.get_input_embeddings().weight.std().item()
    prefixes = torch.randn(3, 4, lm.hidden_size, generator=generator) * scale
    prompts = ["A picture of", "Q: what colour is the circle? A:", "A"]
    embeds, mask = build_prompt_embeds(lm, [[prefixes[i], prompts[i]] for i in range(3)])
    assert mask[:, 0].eq(0).any()  # the batch is left-padded
    stop_ids = stop_token_ids(lm, True)
    common = dict(inputs_embeds=embeds, attention_mask=mask, eos_token_id=stop_ids, pad_token_id=lm.pad_token_id)
    greedy = generate(lm, embeds, mask, GenerationConfig(max_new_tokens=10))
    assert greedy == hf_cut(lm, lm.model.generate(**common, do_sample=False, max_new_tokens=10), stop_ids)
    beam = generate(lm, embeds, mask, GenerationConfig(strategy="beam", num_beams=2, max_new_tokens=6))
    expected = lm.model.generate(**common, do_sample=False, num_beams=2, max_new_tokens=6)
    assert beam == hf_cut(lm, expected, stop_ids)
