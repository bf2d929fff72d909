"""The embedded SmolLM2-135M-Instruct through FrozenLM: loads from the asset directory; vlbridge's greedy /
beam decoding of text prompts given as embeddings equals HF `generate` on their token ids; streamed
soft-prompt answers equal the non-streamed ones. Slow (loads 135M parameters); needs the embedded
asset (`make setup`). Spec: vlbridge.models.lm, vlbridge.models.generation(_stream)."""

from __future__ import annotations

import pytest
import torch

from vlbridge.models.generation import GenerationConfig, first_line, generate, stop_token_ids
from vlbridge.models.generation_stream import stream_text
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


def test_smollm2_text_prompts_decode_as_hf_generate_on_token_ids(smollm2):
    lm = smollm2
    prompts = ["A picture of", "Q: what colour is the circle? A:", "The capital of France is", "1, 2, 3,"]
    embeds, mask = build_prompt_embeds(lm, [[text] for text in prompts])
    assert mask[:, 0].eq(0).any()  # the batch is left-padded
    ids = torch.full(mask.shape, lm.pad_token_id, dtype=torch.long)  # the same batch as token ids
    for row, token_ids in enumerate(lm.tokenize(prompts)):
        ids[row, mask.shape[1] - len(token_ids) :] = torch.tensor(token_ids)
    stop_ids = stop_token_ids(lm, True)
    common = dict(input_ids=ids, attention_mask=mask, eos_token_id=stop_ids, pad_token_id=lm.pad_token_id, do_sample=False)
    greedy = generate(lm, embeds, mask, GenerationConfig(max_new_tokens=10))
    expected = lm.model.generate(**common, max_new_tokens=10)[:, ids.shape[1] :]  # new tokens only
    assert greedy == hf_cut(lm, expected, stop_ids)
    assert any(len(row) < 10 for row in greedy) and any(len(row) == 10 for row in greedy)
    beam = generate(lm, embeds, mask, GenerationConfig(strategy="beam", num_beams=2, max_new_tokens=6))
    expected = lm.model.generate(**common, num_beams=2, max_new_tokens=6)[:, ids.shape[1] :]
    assert beam == hf_cut(lm, expected, stop_ids)


def test_smollm2_streamed_soft_prompt_answers_equal_the_non_streamed_ones(smollm2):
    lm = smollm2
    generator = torch.Generator().manual_seed(0)
    scale = lm.model.get_input_embeddings().weight.std().item()
    prefixes = torch.randn(3, 4, lm.hidden_size, generator=generator) * scale
    prompts = ["A picture of", "Q: what colour is the circle? A:", "A"]
    for config in (GenerationConfig(max_new_tokens=12), GenerationConfig(strategy="sample", max_new_tokens=12, seed=1)):
        for prefix, text in zip(prefixes, prompts):
            embeds, mask = build_prompt_embeds(lm, [[prefix, text]])
            expected = first_line(lm.decode(generate(lm, embeds, mask, config)[0]))
            assert "".join(stream_text(lm, embeds, mask, config)) == expected
