"""Generation through HF `generate`: vlbridge's settings reach it (greedy / beam equal a direct HF call
with the same stop ids), rows are independent under left padding (against an uncached row-by-row
reference), the stop rule and trimming (EOS dropped, newline token kept), nucleus sampling keeps the
smallest set reaching top_p and is reproducible from the seed without touching the caller's RNG,
an LM's own generation_config.json changes nothing, and nothing is printed per call.
Spec: vlbridge.models.generation."""

from __future__ import annotations

import contextlib
import logging

import pytest
import torch
from transformers import GenerationConfig as HFGenerationConfig
from transformers import TopPLogitsWarper

from helpers.tiny_lm import ARCHITECTURES, save_tiny_lm
from vlbridge.errors import UserError
from vlbridge.models.generation import GenerationConfig, generate, stop_token_ids
from vlbridge.models.lm import FrozenLM

BEAM_SETTINGS = [  # (num_beams, length_penalty, early_stopping)
    (3, 1.0, False),
    (2, 0.5, True),
    (4, 2.0, "never"),
    (3, -1.0, False),
]


# Logit bias on EOS and newline per architecture: with it some rows of the test prompts stop
# early (at EOS or a newline) and others run to max_new_tokens (random LMs rarely stop).
STOP_BIAS = {"gpt2": 1.7, "llama": 3.4, "opt": 4.2, "gptj": 3.3}


def boost_stop_tokens(lm: FrozenLM, bias: float) -> None:
    """Give the LM head a bias of `bias` on EOS and the newline token (same head for us and HF)."""
    head = lm.model.get_output_embeddings()
    if head.bias is None:
        biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
        biased.weight = head.weight  # shared (tied) weight, unchanged
        torch.nn.init.zeros_(biased.bias)
        lm.model.set_output_embeddings(biased)
        head = biased
    with torch.no_grad():
        head.bias[lm.eos_token_id] += bias
        head.bias[min(lm.newline_token_ids)] += bias
    head.requires_grad_(False)


@pytest.fixture(scope="module")
def lms(tmp_path_factory):
    """Tiny LMs of every architecture with boosted stop tokens."""
    root = tmp_path_factory.mktemp("gen-lms")
    loaded = {}
    for arch in ARCHITECTURES:
        lm = FrozenLM.from_pretrained(save_tiny_lm(root / arch, arch))
        boost_stop_tokens(lm, STOP_BIAS[arch])
        loaded[arch] = lm
    return loaded


def left_padded_prompts(lm, batch_size=6, length=7, seed=1, padded=True):
    generator = torch.Generator().manual_seed(seed)
    embeds = torch.randn(batch_size, length, lm.hidden_size, generator=generator)
    mask = torch.ones(batch_size, length, dtype=torch.long)
    for row in range(batch_size if padded else 0):
        mask[row, : row % 4] = 0  # rows 1..3 are left-padded by 1..3 positions
    return embeds, mask


def hf_reference(lm, embeds, mask, stop_ids, **kwargs) -> list[list[int]]:
    """A direct HF generate call with the stop ids as EOS, cut by hand: up to the first stop token, EOS dropped."""
    out = lm.model.generate(
        inputs_embeds=embeds, attention_mask=mask, eos_token_id=stop_ids, pad_token_id=lm.pad_token_id, **kwargs
    )
    rows = []
    for row in out.tolist():
        cut = []
        for token in row:
            cut.append(token)
            if token in stop_ids:
                break
        rows.append(cut[:-1] if cut[-1:] == [lm.eos_token_id] else cut)
    return rows


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_greedy_equals_a_direct_hf_call_and_rows_stop_apart(lms, arch):
    lm = lms[arch]
    lengths = []
    for stop_at_newline, padded in ((False, True), (True, True), (True, False)):
        embeds, mask = left_padded_prompts(lm, padded=padded)
        stop_ids = stop_token_ids(lm, stop_at_newline)
        config = GenerationConfig(max_new_tokens=12, stop_at_newline=stop_at_newline)
        ours = generate(lm, embeds, mask, config)
        assert ours == hf_reference(lm, embeds, mask, stop_ids, do_sample=False, max_new_tokens=12)
        lengths += [len(row) for row in ours]
    assert max(lengths) == 12  # some rows run to max_new_tokens ...
    assert min(lengths) < 12  # ... and some stop early


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("num_beams, length_penalty, early_stopping", BEAM_SETTINGS)
def test_beam_settings_reach_hf_beam_search(lms, arch, num_beams, length_penalty, early_stopping):
    lm = lms[arch]
    for stop_at_newline, max_new, padded in ((False, 5, True), (True, 12, True)):
        embeds, mask = left_padded_prompts(lm, padded=padded)
        config = GenerationConfig(
            strategy="beam",
            max_new_tokens=max_new,
            num_beams=num_beams,
            length_penalty=length_penalty,
            early_stopping=early_stopping,
            stop_at_newline=stop_at_newline,
        )
        expected = hf_reference(
            lm, embeds, mask, stop_token_ids(lm, stop_at_newline), do_sample=False, max_new_tokens=max_new,
            num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping,
        )  # fmt: skip
        assert generate(lm, embeds, mask, config) == expected


def test_beam_search_explores_more_than_greedy(lms):
    found_difference = False
    for arch, lm in lms.items():
        embeds, mask = left_padded_prompts(lm)
        greedy = generate(lm, embeds, mask, GenerationConfig(max_new_tokens=8))
        beam = generate(lm, embeds, mask, GenerationConfig(strategy="beam", num_beams=4, max_new_tokens=8))
        found_difference |= greedy != beam
        one_beam = generate(lm, embeds, mask, GenerationConfig(strategy="beam", num_beams=1, max_new_tokens=8))
        assert one_beam == greedy, arch  # a beam of one is greedy search
    assert found_difference


def naive_greedy(lm, embeds, mask, max_new, stop_ids):
    """Reference without KV cache or batching: rerun the whole prompt + generated tokens each step."""
    rows = []
    for row in range(embeds.shape[0]):
        keep = mask[row].bool()
        sequence = embeds[row, keep][None]  # (1, L_row, H)
        out = []
        for _ in range(max_new):
            logits = lm(sequence, torch.ones(sequence.shape[:2], dtype=torch.long)).logits[0, -1]
            token = int(logits.argmax())
            out.append(token)
            if token in stop_ids:
                break
            sequence = torch.cat([sequence, lm.embed(torch.tensor([[token]]))], dim=1)
        rows.append(out[:-1] if out[-1:] == [lm.eos_token_id] else out)
    return rows


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_left_padded_batched_greedy_equals_uncached_row_by_row_greedy(lms, arch):
    lm = lms[arch]
    embeds, mask = left_padded_prompts(lm, seed=3)
    stop_ids = stop_token_ids(lm, True)
    expected = naive_greedy(lm, embeds, mask, 10, stop_ids)
    assert generate(lm, embeds, mask, GenerationConfig(max_new_tokens=10)) == expected


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_stop_tokens_eos_dropped_newline_kept(lms, strategy):
    lm = lms["llama"]
    embeds, mask = left_padded_prompts(lm)
    newline_ids, common = lm.newline_token_ids, dict(strategy=strategy, num_beams=2, max_new_tokens=12)
    with_newline = generate(lm, embeds, mask, GenerationConfig(stop_at_newline=True, **common))
    without = generate(lm, embeds, mask, GenerationConfig(stop_at_newline=False, **common))
    stopped_at_newline = 0
    for short, long in zip(with_newline, without):
        assert lm.eos_token_id not in short and lm.eos_token_id not in long
        assert not set(short[:-1]) & newline_ids  # a newline token only as the last one
        if short and short[-1] in newline_ids:
            stopped_at_newline += 1
            if strategy == "greedy":
                assert long[: len(short)] == short and len(long) > len(short)  # the same path until the newline
    assert stopped_at_newline >= 1
    assert all(len(row) <= 3 for row in generate(lm, embeds, mask, GenerationConfig(max_new_tokens=3)))


def reference_nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """(V,) -> (V,) probabilities over the smallest most-likely set with mass >= top_p (one token at least)."""
    probs = logits.softmax(-1)
    order = probs.argsort(descending=True).tolist()
    kept, mass = [], 0.0
    for token in order:
        kept.append(token)
        mass += float(probs[token])
        if mass >= top_p:
            break
    nucleus = torch.zeros_like(probs)
    nucleus[kept] = probs[kept]
    return nucleus / nucleus.sum()


def test_hf_top_p_keeps_the_smallest_set_reaching_top_p():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])  # sorted: 0.5 (1), 0.3 (3), 0.15 (2), 0.05 (0)
    logits = probs.log()
    kept = lambda p: set(torch.isfinite(TopPLogitsWarper(top_p=p)(None, logits.clone()))[0].nonzero().flatten().tolist())  # noqa: E731
    assert kept(0.4) == {1}
    assert kept(0.7) == {1, 3}  # NOT the complement {0, 2} (the published LiMBeR bug)
    assert kept(0.85) == {1, 3, 2}
    assert kept(0.99) == {0, 1, 2, 3}
    assert kept(1e-6) == {1}  # the most likely token always stays
    generator = torch.Generator().manual_seed(0)
    for row in torch.randn(40, 50, generator=generator) * 3:
        for top_p in (0.1, 0.5, 0.9):
            ours = reference_nucleus(row, top_p) > 0
            assert torch.equal(torch.isfinite(TopPLogitsWarper(top_p=top_p)(None, row[None].clone()))[0], ours)


def test_sampling_follows_the_tempered_nucleus_distribution(lms):
    lm = lms["gpt2"]
    prompt = torch.randn(1, 5, lm.hidden_size, generator=torch.Generator().manual_seed(7))
    temperature, top_p = 0.7, 0.6
    logits = lm(prompt, torch.ones(1, 5, dtype=torch.long)).logits[0, -1].float() / temperature
    expected = reference_nucleus(logits, top_p)  # (V,)
    draws = 4000
    config = GenerationConfig(strategy="sample", max_new_tokens=1, top_p=top_p, temperature=temperature, seed=3)
    samples = generate(lm, prompt.expand(draws, -1, -1), torch.ones(draws, 5, dtype=torch.long), config)
    tokens = torch.tensor([row[0] if row else lm.eos_token_id for row in samples])
    counts = torch.bincount(tokens, minlength=lm.vocab_size).float() / draws
    assert set(tokens.tolist()) <= set(expected.nonzero().flatten().tolist())  # nothing outside the nucleus
    assert (expected > 0).sum() >= 3
    assert torch.allclose(counts, expected, atol=0.03)


def test_sampling_is_seeded_and_cold_sampling_is_greedy(lms):
    lm = lms["opt"]
    embeds, mask = left_padded_prompts(lm)
    sample = lambda seed, **kw: generate(lm, embeds, mask, GenerationConfig(strategy="sample", seed=seed, **kw))  # noqa: E731
    torch.manual_seed(11)
    first = sample(5, top_p=1.0)
    torch.manual_seed(12)  # the caller's RNG state plays no part
    assert sample(5, top_p=1.0) == first
    assert sample(6, top_p=1.0) != first
    greedy = generate(lm, embeds, mask, GenerationConfig())
    assert sample(5, top_p=1e-6) == greedy
    assert sample(5, top_p=1.0, temperature=1e-4) == greedy


def test_sampling_leaves_the_callers_rng_where_it_was(lms):
    lm = lms["gpt2"]
    embeds, mask = left_padded_prompts(lm)
    torch.manual_seed(21)
    expected = torch.rand(4)
    torch.manual_seed(21)
    generate(lm, embeds, mask, GenerationConfig(strategy="sample", seed=3))
    assert torch.equal(torch.rand(4), expected)


@contextlib.contextmanager
def hf_warnings(caplog):
    """Collect the WARNING records of transformers' loggers (whether or not they reach the root logger)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_warning()
    type(hf_logging.get_logger("transformers")).warning_once.cache_clear()  # warnings logged once ever, now again
    caplog.set_level(logging.WARNING)
    hf_root = logging.getLogger("transformers")
    hf_root.addHandler(caplog.handler)
    try:
        yield caplog.records
    finally:
        hf_root.removeHandler(caplog.handler)


def test_the_lms_own_generation_config_changes_nothing(lms, monkeypatch, caplog):
    lm = lms["llama"]
    embeds, mask = left_padded_prompts(lm)
    configs = [
        GenerationConfig(max_new_tokens=10),
        GenerationConfig(strategy="beam", num_beams=3, max_new_tokens=10),
        GenerationConfig(strategy="sample", top_p=0.8, temperature=0.9, max_new_tokens=10, seed=4),
    ]
    clean = [generate(lm, embeds, mask, config) for config in configs]
    assert max(len(row) for rows in clean for row in rows) == 10 and min(len(row) for rows in clean for row in rows) < 5
    meddling = dict(
        do_sample=True, temperature=0.3, top_k=2, top_p=0.5, min_p=0.2, typical_p=0.5, repetition_penalty=3.0,
        no_repeat_ngram_size=1, num_beams=5, length_penalty=-2.0, early_stopping=True, num_return_sequences=2,
        eos_token_id=3, pad_token_id=4,
    )  # fmt: skip
    for lengths in (dict(max_length=7, min_length=5), dict(max_new_tokens=2, min_new_tokens=6), dict()):
        monkeypatch.setattr(lm.model, "generation_config", HFGenerationConfig(**meddling, **lengths))
        with hf_warnings(caplog) as records:
            assert [generate(lm, embeds, mask, config) for config in configs] == clean, lengths
        # lengths are given the way the file gives them (max_length, as Llama-2's does): no clash to warn about
        assert not [r.getMessage() for r in records if "seem to have been set" in r.getMessage()], lengths


def test_generate_prints_logs_and_warns_nothing(lms, capfd, caplog, recwarn):
    lm = lms["gpt2"]
    embeds, mask = left_padded_prompts(lm, batch_size=2)
    with hf_warnings(caplog) as records:
        for config in (
            GenerationConfig(max_new_tokens=3, length_penalty=2.0, early_stopping=True, top_p=0.5, temperature=0.5),
            GenerationConfig(strategy="beam", num_beams=1, max_new_tokens=3, length_penalty=2.0, early_stopping="never"),
            GenerationConfig(strategy="beam", num_beams=2, max_new_tokens=3, top_p=0.5),
            GenerationConfig(strategy="sample", max_new_tokens=3, num_beams=4, early_stopping=True),
        ):
            generate(lm, embeds, mask, config)
    assert [record.getMessage() for record in records] == []
    assert capfd.readouterr() == ("", "")
    assert [str(w.message) for w in recwarn] == []


def test_bad_configs_and_prompts_are_rejected(lms):
    lm = lms["gpt2"]
    embeds, mask = left_padded_prompts(lm, batch_size=2)
    for bad in (
        GenerationConfig(strategy="topk"),
        GenerationConfig(max_new_tokens=0),
        GenerationConfig(top_p=0.0),
        GenerationConfig(temperature=0.0),
        GenerationConfig(strategy="beam", num_beams=0),
        GenerationConfig(early_stopping="sometimes"),
    ):
        with pytest.raises(UserError):
            generate(lm, embeds, mask, bad)
    right_padded = mask.flip(1)
    right_padded[0, -1] = 0
    with pytest.raises(ValueError, match="LEFT-padded"):
        generate(lm, embeds, right_padded)
    with pytest.raises(ValueError, match=r"\(B, L, 32\)"):
        generate(lm, embeds[..., :8], mask)
