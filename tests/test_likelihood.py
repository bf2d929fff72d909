"""Tests for caption likelihood: per-token losses equal the LM's own loss, batching never changes a
row, word classes follow the words, and the blind / text contexts are what they claim to be."""

import numpy as np
import pytest
import torch

from vlbridge.data.objects_text import word_class
from vlbridge.evaluation.likelihood import caption_losses, caption_tokens, continuation_losses, start_context, text_context


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def lm(request, tmp_path_factory):
    from helpers.tiny_lm import save_tiny_lm

    from vlbridge.models.lm import FrozenLM

    return FrozenLM.from_pretrained(save_tiny_lm(tmp_path_factory.mktemp("likelihood_lm"), request.param))


CAPTIONS = ["a red circle above a blue square", "a small green triangle", "there is a large yellow star\tin the top left"]


def test_losses_equal_the_lm_loss_on_the_same_sequence(lm):
    generator = torch.Generator().manual_seed(0)
    context = torch.randn(3, lm.hidden_size, generator=generator)
    ids, _ = caption_tokens(lm, CAPTIONS[0])
    (losses,) = continuation_losses(lm, [context], [ids])
    embeds = torch.cat([context, lm.embed(torch.tensor(ids))])[None]
    labels = torch.tensor([[-100] * 3 + ids])
    with torch.no_grad():
        reference = lm(embeds, None, labels=labels).loss  # HF's mean shifted cross-entropy
    assert losses.shape == (len(ids),)
    assert losses.mean() == pytest.approx(float(reference), rel=1e-5)


def test_batching_and_padding_never_change_a_row(lm):
    generator = torch.Generator().manual_seed(1)
    contexts = [torch.randn(n, lm.hidden_size, generator=generator) for n in (1, 4, 2)]
    targets = [caption_tokens(lm, c)[0] for c in CAPTIONS]
    together = continuation_losses(lm, contexts, targets, batch_size=3)
    alone = [continuation_losses(lm, [c], [t])[0] for c, t in zip(contexts, targets)]
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_tokens_are_the_training_tokens_plus_eos_with_their_word_classes(lm):
    caption = "a large red circle above a dog"
    ids, classes = caption_tokens(lm, caption, word_class)
    assert ids == lm.tokenize([caption])[0] + [lm.eos_token_id]
    expected = {"a": None, "large": "property", "red": "property", "circle": "category", "above": "property",
                "dog": "category"}
    for index, cls in enumerate(classes[:-1]):
        start = len(lm.decode(ids[:index]))  # where this token's text begins in the caption
        if not lm.decode([ids[index]]).strip():
            assert cls is None  # a bare space belongs to no word
            continue
        while caption[start] == " ":
            start += 1
        word = caption[: caption.find(" ", start) if " " in caption[start:] else len(caption)].split(" ")[-1]
        assert cls == expected[word], (index, word)
    assert classes[-1] is None  # EOS
    assert set(classes) >= {"category", "property"}  # every word class is reached through pieces of words


def test_caption_losses_split_by_class_and_contexts(lm):
    blind = start_context(lm)
    assert blind.shape == (1, lm.hidden_size)
    text = text_context(lm, " a red circle ")
    assert text.shape[0] == len(lm.tokenize(["a red circle\n"])[0])
    scored = caption_losses(lm, ["x", "y"], [blind, text], CAPTIONS[:2], classify=word_class)
    for item in scored:
        cat, n_cat = item.class_total("category")
        prop, n_prop = item.class_total("property")
        assert n_cat >= 1 and n_prop >= 1
        assert cat + prop <= item.total + 1e-9 and item.total == pytest.approx(item.token_losses.sum())
