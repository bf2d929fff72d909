"""LiT: frozen sentence encoder (a tiny random BERT standing in for all-MiniLM-L6-v2) + trainable image tower."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from helpers.clip_fixtures import bert_dir, solid_images

from vlbridge.errors import UserError
from vlbridge.models.clip_loading import load_clip
from vlbridge.models.lit import LockedTextCLIP, build_lit, create_lit, load_text_encoder, save_lit_run
from vlbridge.training.loss import ClipLoss

TEXTS = ["a red circle", "a photo of a large blue star to the left of a square", "shapes"]


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    return bert_dir(tmp_path_factory.mktemp("bert"))


def test_sentence_embedding_matches_sentence_transformers(text_dir):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    model, tokenizer, _ = build_lit("vl-micro-vit", text_dir, context_length=24)
    ids = tokenizer(TEXTS)
    assert ids.dtype == torch.long and ids.shape == (3, 24)
    assert (ids[0] == tokenizer.pad_token_id).sum() > 0  # padded with the pad id
    ours = model.sentence_embedding(ids)
    transformer = Transformer(str(text_dir), max_seq_length=24)
    reference = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean"), Normalize()])
    expected = reference.encode(TEXTS, convert_to_tensor=True)
    assert (ours - expected).abs().max() <= 1e-5


def test_encode_text_ignores_padding_and_projects(text_dir):
    model, tokenizer, spec = build_lit("vl-micro-vit", text_dir, context_length=24)
    short = tokenizer(TEXTS)
    longer = torch.nn.functional.pad(short, (0, 8), value=tokenizer.pad_token_id)  # more padding, same text
    with torch.no_grad():
        assert torch.allclose(model.encode_text(short), model.encode_text(longer), atol=1e-6)
        assert model.encode_text(short).shape == (3, spec["embed_dim"])
        expected = model.text_projection(model.sentence_embedding(short))
        assert torch.equal(model.encode_text(short), expected)


def test_only_image_tower_projection_and_scale_train(text_dir):
    model, tokenizer, _ = build_lit("vl-micro-vit", text_dir)
    frozen_before = {k: v.clone() for k, v in model.text_model.state_dict().items()}
    trainable_before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    images = torch.stack([torch.rand(3, 32, 32) for _ in range(3)])
    model.train()
    assert not model.text_model.training  # dropout of the frozen encoder stays off
    out = model(images, tokenizer(TEXTS))
    ClipLoss()(out["image_features"], out["text_features"], out["logit_scale"]).backward()
    optimizer.step()
    assert all(torch.equal(v, frozen_before[k]) for k, v in model.text_model.state_dict().items())
    changed = {k for k, v in model.trainable_state_dict().items() if not torch.equal(v, trainable_before[k])}
    assert {"text_projection.weight", "logit_scale"} <= changed and any(k.startswith("visual.") for k in changed)
    assert not any(p.requires_grad for p in model.text_model.parameters())


def test_lit_run_dir_roundtrip_through_load_clip(tmp_path, text_dir):
    bundle = create_lit("vl-micro-rn", text_dir)
    model = bundle.model
    assert isinstance(model, LockedTextCLIP)
    _, _, spec = build_lit("vl-micro-rn", text_dir)
    save_lit_run(model, spec, tmp_path / "run")
    saved_keys = set(load_file(str(tmp_path / "run" / "model.safetensors")))
    assert saved_keys == set(model.trainable_state_dict()) and not any(k.startswith("text_model.") for k in saved_keys)
    loaded = load_clip(str(tmp_path / "run"))
    images = solid_images(2)
    assert (loaded.embed_images(images) - bundle.embed_images(images)).abs().max() <= 1e-6
    assert (loaded.embed_texts(TEXTS) - bundle.embed_texts(TEXTS)).abs().max() <= 1e-6


def test_text_encoder_dir_errors(tmp_path):
    with pytest.raises(UserError, match="has no config.json"):
        load_text_encoder(tmp_path)
